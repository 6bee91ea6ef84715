using System.Runtime.CompilerServices;
using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// The VM's guest-physical memory as the host sees it: every access is bounds-checked against the memslots and may
/// not cross a slot's end. Host accesses do not mark pages dirty (as with KVM: only guest writes are logged).
/// Safe against concurrent teardown: an access racing <see cref="Vm.Dispose"/>, <see cref="Vm.RemoveSlot"/> or
/// <see cref="Vm.ResizeSlot"/> either completes on live memory or throws (<see cref="ObjectDisposedException"/>, or
/// <see cref="InvalidOperationException"/> naming the removed slot). Writes into system slot 0 (the backend's code,
/// stacks and page tables) are refused; <see cref="WithSystemSlotWrites"/> allows them deliberately.
/// </summary>
public sealed unsafe partial class GuestMemory
{
    readonly Vm _vm;
    readonly bool _systemWrites;
    GuestMemory? _systemWritable;

    internal GuestMemory(Vm vm, bool systemWrites = false)
    {
        this._vm = vm;
        this._systemWrites = systemWrites;
    }

    /// <summary>
    /// The same memory, but writes into system slot 0 are allowed. Slot 0 holds what the backend needs to run guest
    /// code (on KVM: GDT, page tables, code, stacks); overwriting it can make the next run fail (a KVM triple fault,
    /// whose message then names this as the likely cause). Reads of slot 0 need no such view.
    /// </summary>
    public GuestMemory WithSystemSlotWrites() => _systemWrites ? this : _systemWritable ??= new GuestMemory(_vm, true);

    /// <summary>Total bytes of all slots.</summary>
    public Size Size
    {
        get
        {
            long n = 0;
            foreach (var s in _vm.SlotsSnapshot) n += s.Mapping.Length;
            return new Size(n);
        }
    }

    /// <summary>Reads a <typeparamref name="T"/> at guest-physical <paramref name="gpa"/> (host access: no dirty logging).</summary>
    /// <remarks>AggressiveOptimization here and on <see cref="Write{T}"/>: a generic instantiation a recipe picks is not in the
    /// ReadyToRun image, so it would start at Tier 0; the warm-up compiles the common ones (ulong, uint, byte) fully optimized.</remarks>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public T Read<T>(ulong gpa) where T : unmanaged
    {
        using var a = Resolve(gpa, sizeof(T), write: false);
        return Unsafe.ReadUnaligned<T>((void*)a.Address);
    }

    /// <summary>Writes <paramref name="value"/> at guest-physical <paramref name="gpa"/> (host access: the dirty log does not see it, as with KVM).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Write<T>(ulong gpa, T value) where T : unmanaged
    {
        using var a = Resolve(gpa, sizeof(T), write: true);
        Unsafe.WriteUnaligned((void*)a.Address, value);
    }

    /// <summary>Copies from guest-physical <paramref name="gpa"/> into <paramref name="destination"/>.</summary>
    public void Read(ulong gpa, Span<byte> destination)
    {
        using var a = Resolve(gpa, destination.Length, write: false);
        new ReadOnlySpan<byte>((void*)a.Address, destination.Length).CopyTo(destination);
    }

    /// <summary>Copies <paramref name="source"/> to guest-physical <paramref name="gpa"/>.</summary>
    public void Write(ulong gpa, ReadOnlySpan<byte> source)
    {
        using var a = Resolve(gpa, source.Length, write: true);
        source.CopyTo(new Span<byte>((void*)a.Address, source.Length));
    }

    /// <summary>Fills [gpa, gpa+length) with <paramref name="value"/> (see <see cref="Fill(ulong, long, byte)"/>).</summary>
    public void Fill(ulong gpa, Size length, byte value) => Fill(gpa, length.Bytes, value);

    /// <summary>Fills [gpa, gpa+length) with <paramref name="value"/>; a long fill observes the run's cancellation
    /// (<see cref="RunCancellation"/>) between 64 MiB chunks.</summary>
    public void Fill(ulong gpa, long length, byte value)
    {
        using var a = Resolve(gpa, length, write: true);
        for (long off = 0; off < length; off += Chunk)
        {
            RunCancellation.ThrowIfCancellationRequested();
            new Span<byte>((void*)(a.Address + (nint)off), (int)Math.Min(Chunk, length - off)).Fill(value);
        }
    }

    const long Chunk = 64L << 20;

    /// <summary>
    /// The host bytes of [gpa, gpa+length). Raw: the span stays valid only until the slot is removed or resized or the
    /// VM disposed — using it afterwards touches unmapped memory (a crash) — so keep it short-lived, on one thread that
    /// also owns the slot's lifetime; prefer <see cref="Read"/>/<see cref="Write"/>, which are safe against teardown.
    /// Refused for system slot 0 unless through <see cref="WithSystemSlotWrites"/> (the span is writable).
    /// </summary>
    public Span<byte> Span(ulong gpa, int length)
    {
        using var a = Resolve(gpa, length, write: true);
        return new((void*)a.Address, length);
    }

    /// <inheritdoc cref="Span(ulong, int)"/>
    public Span<T> Span<T>(ulong gpa, int count) where T : unmanaged
    {
        using var a = Resolve(gpa, (long)count * sizeof(T), write: true);
        return new((void*)a.Address, count);
    }

    /// <summary>gpa → host virtual address (hva). Raw, with the same lifetime caveat as <see cref="Span(ulong, int)"/>:
    /// the address is unmapped when the slot is removed or resized or the VM disposed.</summary>
    public nint HostAddress(ulong gpa)
    {
        using var a = Resolve(gpa, 1, write: true);
        return a.Address;
    }

    /// <summary>The memslot containing <paramref name="gpa"/>.</summary>
    public MemSlot SlotAt(ulong gpa)
    {
        using var a = Resolve(gpa, 1, write: false);
        return a.Slot;
    }

    /// <summary>Whether <paramref name="length"/> bytes at <paramref name="gpa"/> lie within one memslot.</summary>
    public bool Contains(ulong gpa, long length = 1)
    {
        _vm.ThrowIfDisposed();
        var s = _vm.FindSlotAt(gpa);
        return s is not null && length >= 0 && (ulong)length <= s.EndGpa - gpa;
    }

    /// <summary>Drops the pages of [gpa, gpa+length) (see <see cref="Discard(ulong, long)"/>).</summary>
    public void Discard(ulong gpa, Size length) => Discard(gpa, length.Bytes);

    /// <summary>
    /// Drops the pages of [gpa, gpa+length) so the next access reads zeros: MADV_DONTNEED for private memory,
    /// FALLOC_FL_PUNCH_HOLE for shmem/shared hugetlb. Must be aligned to the backing's page size.
    /// </summary>
    public void Discard(ulong gpa, long length)
    {
        using var a = Resolve(gpa, length, write: true);
        CheckAligned(a.Slot, gpa, length, "discard");
        for (long off = 0; off < length; off += Chunk)
        {
            RunCancellation.ThrowIfCancellationRequested();
            a.Slot.Mapping.Discard((long)(gpa - a.Slot.Gpa) + off, Math.Min(Chunk, length - off));
        }
    }

    /// <summary>Faults [gpa, gpa+length) in on the host (see <see cref="Populate(ulong, long, bool)"/>).</summary>
    public void Populate(ulong gpa, Size length, bool write = true) => Populate(gpa, length.Bytes, write);

    /// <summary>Faults [gpa, gpa+length) in on the host (MADV_POPULATE_WRITE, or _READ); a long populate observes the
    /// run's cancellation (<see cref="RunCancellation"/>) between 64 MiB chunks.</summary>
    public void Populate(ulong gpa, long length, bool write = true)
    {
        using var a = Resolve(gpa, length, write: false); // faulting pages in does not change their contents
        CheckAligned(a.Slot, gpa, length, "populate");
        // 64 MiB pieces (whole huge pages) so cancellation is observed and a progress bar can move.
        var chunk = Math.Max(Chunk, a.Slot.PageSize);
        using var progress = length > chunk ? Progress.Start("populate", length, "B") : ProgressReporter.None;
        for (long off = 0; off < length; off += chunk)
        {
            RunCancellation.ThrowIfCancellationRequested();
            var len = Math.Min(chunk, length - off);
            a.Slot.Mapping.Populate((long)(gpa - a.Slot.Gpa) + off, len, write);
            progress.Advance(len);
        }
    }

    /// <summary>Populates every slot (a slot removed meanwhile is skipped).</summary>
    public void PopulateAll(bool write = true)
    {
        foreach (var s in _vm.SlotsSnapshot)
        {
            using var use = SlotGuard.Enter(s.Serial);
            if (s.Removed) { _vm.ThrowIfDisposed(); continue; }
            for (long off = 0; off < s.Mapping.Length; off += Chunk)
            {
                RunCancellation.ThrowIfCancellationRequested();
                s.Mapping.Populate(off, Math.Min(Chunk, s.Mapping.Length - off), write);
            }
        }
    }

    /// <summary>Bytes of guest memory resident on the host (mincore over every slot; a slot removed meanwhile counts nothing).</summary>
    public Size ResidentBytes
    {
        get
        {
            _vm.ThrowIfDisposed();
            long n = 0;
            foreach (var s in _vm.SlotsSnapshot)
            {
                using var use = SlotGuard.Enter(s.Serial);
                if (s.Removed) { _vm.ThrowIfDisposed(); continue; }
                n += s.Mapping.Resident(0, s.Mapping.Length);
            }
            return new Size(n);
        }
    }

    /// <summary>Resident bytes of [gpa, gpa+length).</summary>
    public Size Resident(ulong gpa, Size length) => Resident(gpa, length.Bytes);

    /// <summary>Resident bytes of [gpa, gpa+length).</summary>
    public Size Resident(ulong gpa, long length)
    {
        using var a = Resolve(gpa, length, write: false);
        var start = (long)(gpa - a.Slot.Gpa) & ~4095L;
        var end = (long)(gpa - a.Slot.Gpa) + length;
        return new Size(length == 0 ? 0 : a.Slot.Mapping.Resident(start, end - start));
    }

    static void CheckAligned(MemSlot slot, ulong gpa, long length, string what, long? pageSize = null)
    {
        var ps = pageSize ?? (slot.Backing.IsHugetlb() ? slot.PageSize : 4096);
        if (gpa % (ulong)ps != 0 || length % ps != 0)
            throw new ArgumentException(
                $"cannot {what} [0x{gpa:x}, 0x{gpa + (ulong)length:x}): slot {slot.Id} is {slot.Backing.Name()}, so gpa and length must be multiples of {new Size(ps)}");
    }

    /// <summary>
    /// The one way to host memory: bounds check — [gpa, gpa+length) must lie inside one slot — and the teardown guard.
    /// Returns the host address of gpa, valid until the returned access is disposed (use it with <c>using</c>); the slot
    /// cannot be unmapped meanwhile (removal and dispose wait, so keep it short). <paramref name="write"/>: the caller
    /// may change the bytes (refused for system slot 0 unless this is the <see cref="WithSystemSlotWrites"/> view).
    /// AggressiveOptimization (with Vm.FindSlotAt): the warm-up's first call JIT-compiles it
    /// fully optimized, so a recipe's first guest-memory loop does not run the ReadyToRun version until tier 1 replaces it
    /// (measured: first 4096-page write+read loop 1.35–1.6 × the later ones in CPU time).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal Access Resolve(ulong gpa, long length, bool write)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), $"length must not be negative; got {length}");
        var s = _vm.FindSlotAt(gpa);
        if (s is null || (ulong)length > s.EndGpa - gpa)
        {
            _vm.ThrowIfDisposed(); // a disposed VM has no slots: say so rather than "outside guest memory"
            throw new ArgumentOutOfRangeException(nameof(gpa), OutsideMessage(gpa, length, s));
        }
        var use = SlotGuard.Enter(s.Serial);
        if (s.Removed || (write && s.IsSystem && !_systemWrites))
        {
            use.Dispose();
            throw Refused(s, gpa, length);
        }
        if (write && s.IsSystem) _vm.OnSystemSlotWritten();
        return new Access(s.Mapping.Address + (nint)(gpa - s.Gpa), s, use);
    }

    Exception Refused(MemSlot s, ulong gpa, long length)
    {
        _vm.ThrowIfDisposed();
        var range = $"[0x{gpa:x}, 0x{gpa + (ulong)Math.Max(length, 1):x})";
        if (s.Removed)
            return new InvalidOperationException($"memslot {s.Id} was removed (or resized into new memory) while accessing gpa range {range}; nothing was read or written");
        return new InvalidOperationException(
            $"gpa range {range} is in system slot 0, which holds what the {_vm.Backend} backend needs to run guest code (code, stacks, page tables); " +
            "host writes there would break the next run. Reads are fine; to write it deliberately, use vm.Memory.WithSystemSlotWrites()");
    }

    /// <summary>A resolved range of guest memory in use by this thread; dispose it (<c>using</c>) when done.</summary>
    internal readonly ref struct Access(nint address, MemSlot slot, SlotGuard.Use use)
    {
        public nint Address { get; } = address;
        public MemSlot Slot { get; } = slot;
        public void Dispose() => use.Dispose();
    }

    string OutsideMessage(ulong gpa, long length, MemSlot? s)
    {
        var range = $"[0x{gpa:x}, 0x{gpa + (ulong)Math.Max(length, 1):x})";
        var slots = string.Join("; ", _vm.SlotsSnapshot.Select(x => $"slot {x.Id} [0x{x.Gpa:x}, 0x{x.EndGpa:x})"));
        return s is null
            ? $"gpa range {range} is outside guest memory; memslots: {slots}"
            : $"gpa range {range} runs past the end of slot {s.Id} [0x{s.Gpa:x}, 0x{s.EndGpa:x}); accesses may not cross a memslot; memslots: {slots}";
    }
}
