using System.Runtime.CompilerServices;
using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// The VM's guest-physical memory as the host sees it: every access is bounds-checked against the memslots and may
/// not cross a slot's end. Host accesses do not mark pages dirty (as with KVM: only guest writes are logged).
/// </summary>
public sealed unsafe class GuestMemory
{
    readonly Vm vm;

    internal GuestMemory(Vm vm) => this.vm = vm;

    /// <summary>Total bytes of all slots.</summary>
    public Size Size
    {
        get
        {
            long n = 0;
            foreach (var s in vm.SlotsSnapshot) n += s.Mapping.Length;
            return new Size(n);
        }
    }

    public T Read<T>(ulong gpa) where T : unmanaged
    {
        var p = Resolve(gpa, sizeof(T), out _);
        return Unsafe.ReadUnaligned<T>((void*)p);
    }

    public void Write<T>(ulong gpa, T value) where T : unmanaged
    {
        var p = Resolve(gpa, sizeof(T), out _);
        Unsafe.WriteUnaligned((void*)p, value);
    }

    public void Read(ulong gpa, Span<byte> destination)
        => new ReadOnlySpan<byte>((void*)Resolve(gpa, destination.Length, out _), destination.Length).CopyTo(destination);

    public void Write(ulong gpa, ReadOnlySpan<byte> source)
        => source.CopyTo(new Span<byte>((void*)Resolve(gpa, source.Length, out _), source.Length));

    public void Fill(ulong gpa, long length, byte value)
    {
        var p = Resolve(gpa, length, out _);
        for (long off = 0; off < length; off += int.MaxValue)
            new Span<byte>((void*)(p + (nint)off), (int)Math.Min(int.MaxValue, length - off)).Fill(value);
    }

    /// <summary>The host bytes of [gpa, gpa+length). Valid until the slot is removed or the VM disposed.</summary>
    public Span<byte> Span(ulong gpa, int length) => new((void*)Resolve(gpa, length, out _), length);

    public Span<T> Span<T>(ulong gpa, int count) where T : unmanaged
        => new((void*)Resolve(gpa, (long)count * sizeof(T), out _), count);

    /// <summary>gpa → host virtual address (hva).</summary>
    public nint HostAddress(ulong gpa) => Resolve(gpa, 1, out _);

    /// <summary>The memslot containing <paramref name="gpa"/>.</summary>
    public MemSlot SlotAt(ulong gpa)
    {
        Resolve(gpa, 1, out var slot);
        return slot;
    }

    public bool Contains(ulong gpa, long length = 1)
    {
        vm.ThrowIfDisposed();
        var s = vm.FindSlotAt(gpa);
        return s is not null && length >= 0 && (ulong)length <= s.EndGpa - gpa;
    }

    /// <summary>
    /// Drops the pages of [gpa, gpa+length) so the next access reads zeros: MADV_DONTNEED for private memory,
    /// FALLOC_FL_PUNCH_HOLE for shmem/shared hugetlb. Must be aligned to the backing's page size.
    /// </summary>
    public void Discard(ulong gpa, long length)
    {
        Resolve(gpa, length, out var slot);
        CheckAligned(slot, gpa, length, "discard");
        if (length > 0) slot.Mapping.Discard((long)(gpa - slot.Gpa), length);
    }

    /// <summary>Faults [gpa, gpa+length) in on the host (MADV_POPULATE_WRITE, or _READ).</summary>
    public void Populate(ulong gpa, long length, bool write = true)
    {
        Resolve(gpa, length, out var slot);
        CheckAligned(slot, gpa, length, "populate");
        // Watched (a progress bar), it goes in 128 MiB pieces; else one madvise.
        Progress.Chunked("populate", length, Math.Max(128L << 20, slot.PageSize), (off, len) => slot.Mapping.Populate((long)(gpa - slot.Gpa) + off, len, write));
    }

    /// <summary>Populates every slot.</summary>
    public void PopulateAll(bool write = true)
    {
        foreach (var s in vm.SlotsSnapshot) Populate(s.Gpa, s.Mapping.Length, write);
    }

    /// <summary>Bytes of guest memory resident on the host (mincore over every slot).</summary>
    public Size ResidentBytes
    {
        get
        {
            vm.ThrowIfDisposed();
            long n = 0;
            foreach (var s in vm.SlotsSnapshot) n += s.Mapping.Resident(0, s.Mapping.Length);
            return new Size(n);
        }
    }

    /// <summary>Resident bytes of [gpa, gpa+length).</summary>
    public Size Resident(ulong gpa, long length)
    {
        Resolve(gpa, length, out var slot);
        var start = (long)(gpa - slot.Gpa) & ~4095L;
        var end = (long)(gpa - slot.Gpa) + length;
        return new Size(length == 0 ? 0 : slot.Mapping.Resident(start, end - start));
    }

    static void CheckAligned(MemSlot slot, ulong gpa, long length, string what, long? pageSize = null)
    {
        var ps = pageSize ?? (slot.Backing.IsHugetlb() ? slot.PageSize : 4096);
        if (gpa % (ulong)ps != 0 || length % ps != 0)
            throw new ArgumentException(
                $"cannot {what} [0x{gpa:x}, 0x{gpa + (ulong)length:x}): slot {slot.Id} is {slot.Backing.Name()}, so gpa and length must be multiples of {new Size(ps)}");
    }

    /// <summary>Bounds check: [gpa, gpa+length) must lie inside one slot. Returns the host address of gpa.</summary>
    internal nint Resolve(ulong gpa, long length, out MemSlot slot)
    {
        vm.ThrowIfDisposed();
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), $"length must not be negative; got {length}");
        var s = vm.FindSlotAt(gpa);
        if (s is null || (ulong)length > s.EndGpa - gpa)
            throw new ArgumentOutOfRangeException(nameof(gpa), OutsideMessage(gpa, length, s));
        slot = s;
        return s.Mapping.Address + (nint)(gpa - s.Gpa);
    }

    string OutsideMessage(ulong gpa, long length, MemSlot? s)
    {
        var range = $"[0x{gpa:x}, 0x{gpa + (ulong)Math.Max(length, 1):x})";
        var slots = string.Join("; ", vm.SlotsSnapshot.Select(x => $"slot {x.Id} [0x{x.Gpa:x}, 0x{x.EndGpa:x})"));
        return s is null
            ? $"gpa range {range} is outside guest memory; memslots: {slots}"
            : $"gpa range {range} runs past the end of slot {s.Id} [0x{s.Gpa:x}, 0x{s.EndGpa:x}); accesses may not cross a memslot; memslots: {slots}";
    }
}
