using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// A guest-physical range resolved to the host memory behind one memslot (what a device model gets from translating
/// gpa → hva through the memslots, as QEMU's <c>memory_region_find</c> + <c>qemu_ram_block_from_host</c>). Only
/// <see cref="GuestMemory"/> creates one, so it always lies inside its slot.
/// </summary>
public readonly struct HostRange
{
    internal HostRange(MemSlot slot, ulong gpa, long length)
    {
        Slot = slot;
        Gpa = gpa;
        Length = length;
    }

    /// <summary>The memslot holding the range.</summary>
    public MemSlot Slot { get; }
    /// <summary>Guest-physical start.</summary>
    public ulong Gpa { get; }
    /// <summary>Length in bytes.</summary>
    public long Length { get; }
    /// <summary>Guest-physical end (exclusive).</summary>
    public ulong EndGpa => Gpa + (ulong)Length;

    /// <summary>Offset of <see cref="Gpa"/> inside the slot's host mapping.</summary>
    public long SlotOffset => (long)(Gpa - Slot.Gpa);

    /// <summary>The host virtual address (hva) of <see cref="Gpa"/>.</summary>
    public nint HostAddress => Slot.HostAddress + (nint)SlotOffset;

    /// <inheritdoc/>
    public override string ToString() => $"gpa [0x{Gpa:x}, 0x{EndGpa:x}) → slot {Slot.Id} hva 0x{HostAddress:x}";
}

public sealed unsafe partial class GuestMemory
{
    /// <summary>Resolves [gpa, gpa+length) when it lies inside one memslot; false (no exception) otherwise — for device hot paths.</summary>
    public bool TryTranslate(ulong gpa, long length, out HostRange range)
    {
        _vm.ThrowIfDisposed();
        var s = _vm.FindSlotAt(gpa);
        if (s is null || length <= 0 || (ulong)length > s.EndGpa - gpa)
        {
            range = default;
            return false;
        }
        range = new HostRange(s, gpa, length);
        return true;
    }

    /// <summary>Resolves as much of [gpa, gpa+maxLength) as the memslot holding <paramref name="gpa"/> covers; false when no slot holds gpa.
    /// Walk a range that may span adjacent slots by calling again at <see cref="HostRange.EndGpa"/>.</summary>
    public bool TryTranslatePrefix(ulong gpa, long maxLength, out HostRange range)
    {
        _vm.ThrowIfDisposed();
        var s = _vm.FindSlotAt(gpa);
        if (s is null || maxLength <= 0)
        {
            range = default;
            return false;
        }
        range = new HostRange(s, gpa, (long)Math.Min((ulong)maxLength, s.EndGpa - gpa));
        return true;
    }

    /// <summary>[offset, offset+length) of <paramref name="slot"/>'s memory as a range, without a lookup (the slot is already known).</summary>
    public HostRange SlotRange(MemSlot slot, long offset, long length)
    {
        ArgumentNullException.ThrowIfNull(slot);
        _vm.ThrowIfDisposed();
        if (slot.Vm != _vm) throw new ArgumentException($"slot {slot.Id} belongs to another VM", nameof(slot));
        if (offset < 0 || length <= 0 || offset > slot.Mapping.Length - length)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + length}) is not a non-empty range inside slot {slot.Id}'s {slot.Size}");
        return new HostRange(slot, slot.Gpa + (ulong)offset, length);
    }

    /// <summary>
    /// Drops the host pages of a translated range: MADV_DONTNEED for private memory, FALLOC_FL_PUNCH_HOLE for shmem and
    /// shared hugetlb (as <see cref="Discard(ulong, long)"/>). The range must be aligned to the backing's page size.
    /// </summary>
    public void Discard(in HostRange range)
    {
        var slot = CheckLive(range, "discard");
        CheckAligned(slot, range.Gpa, range.Length, "discard");
        // The raw call, with the message built only on failure: a balloon discards page by page, millions of times.
        var m = slot.Mapping;
        int rc = m.Fd >= 0
            ? Libc.fallocate(m.Fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, range.SlotOffset, range.Length)
            : Libc.madvise(m.Address + (nint)range.SlotOffset, (nuint)range.Length, Libc.MADV_DONTNEED);
        if (rc != 0)
            throw LibcException.FromErrno(Libc.Errno, m.Fd >= 0 ? "fallocate(PUNCH_HOLE)" : "madvise(MADV_DONTNEED)",
                $"discarding {range} ({slot.Backing.Name()})");
    }

    /// <summary>MADV_WILLNEED over a translated range: the hint QEMU gives when the guest deflates (takes pages back).
    /// Rounded out to the backing's page size, since a hint can only cover whole host pages.</summary>
    public void WillNeed(in HostRange range)
    {
        var slot = CheckLive(range, "hint");
        long ps = slot.PageSize;
        long start = range.SlotOffset / ps * ps, end = Math.Min(slot.Mapping.Length, (range.SlotOffset + range.Length + ps - 1) / ps * ps);
        Libc.MadviseChecked(slot.Mapping.Address + (nint)start, end - start, Libc.MADV_WILLNEED,
            $"hinting {new Size(end - start)} of {slot.Backing.Name()} memory");
    }

    /// <summary>MADV_WILLNEED over [gpa, gpa+length), which must lie inside one slot.</summary>
    public void WillNeed(ulong gpa, Size length) => WillNeed(gpa, length.Bytes);

    /// <summary>MADV_WILLNEED over [gpa, gpa+length), which must lie inside one slot.</summary>
    public void WillNeed(ulong gpa, long length)
    {
        MemSlot slot;
        using (var a = Resolve(gpa, length, write: false)) slot = a.Slot;
        if (length > 0) WillNeed(new HostRange(slot, gpa, length));
    }

    MemSlot CheckLive(in HostRange range, string what)
    {
        _vm.ThrowIfDisposed();
        var slot = range.Slot ?? throw new ArgumentException($"cannot {what} a default HostRange; get one from TryTranslate", nameof(range));
        if (slot.Vm != _vm) throw new ArgumentException($"cannot {what} {range}: slot {slot.Id} belongs to another VM", nameof(range));
        if (slot.Removed) throw new InvalidOperationException($"cannot {what} {range}: memslot {slot.Id} was removed from the VM");
        return slot;
    }
}
