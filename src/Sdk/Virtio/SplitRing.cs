namespace VirtLab.Sdk.Virtio;

/// <summary>
/// Where a split virtqueue lives: its size and the addresses of its three parts in an address space (the values a
/// driver writes to queue_desc / queue_driver / queue_device, or passes in VHOST_SET_VRING_ADDR).
/// <list type="bullet">
/// <item>descriptor table: <see cref="Size"/> × 16 bytes, 16-byte aligned;</item>
/// <item>available ring: flags, idx, ring[Size] (u16 each), used_event — 6 + 2·Size bytes, 2-byte aligned;</item>
/// <item>used ring: flags, idx, ring[Size] ({u32 id; u32 len}), avail_event — 6 + 8·Size bytes, 4-byte aligned.</item>
/// </list>
/// Size is a power of two, 1 … 32768. All fields are little-endian.
/// </summary>
public readonly record struct SplitRing(int Size, ulong DescAddress, ulong AvailAddress, ulong UsedAddress)
{
    /// <summary>Bytes of the descriptor table of a ring of <paramref name="size"/>.</summary>
    public static long DescBytes(int size) => (long)VirtqConst.DescSize * size;

    /// <summary>Bytes of the available ring of <paramref name="size"/> (flags, idx, ring[]).</summary>
    public static long AvailBytes(int size) => 6 + 2L * size;

    /// <summary>Bytes of the used ring of <paramref name="size"/> (flags, idx, ring[]).</summary>
    public static long UsedBytes(int size) => 6 + (long)VirtqConst.UsedElemSize * size;

    /// <summary>Bytes of a ring laid out by <see cref="Contiguous"/> (the legacy <c>vring_size</c> with <paramref name="usedAlign"/> 4096).</summary>
    public static long ContiguousBytes(int size, int usedAlign = 4)
    {
        CheckSize(size);
        CheckUsedAlign(usedAlign);
        return AlignUp(DescBytes(size) + AvailBytes(size), usedAlign) + UsedBytes(size);
    }

    /// <summary>
    /// The layout of <c>vring_init</c>: descriptor table at <paramref name="address"/>, the available ring right after it, the
    /// used ring at the next multiple of <paramref name="usedAlign"/> (4 for virtio 1.x; 4096 for a legacy ring).
    /// </summary>
    public static SplitRing Contiguous(ulong address, int size, int usedAlign = 4)
    {
        CheckSize(size);
        CheckUsedAlign(usedAlign);
        var avail = address + (ulong)DescBytes(size);
        var used = (ulong)AlignUp((long)(avail + (ulong)AvailBytes(size)), usedAlign);
        var r = new SplitRing(size, address, avail, used);
        r.Validate();
        return r;
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming what is wrong: the size, an alignment, or a part that wraps past 2^64.</summary>
    public void Validate()
    {
        CheckSize(Size);
        if (DescAddress % 16 != 0) throw new ArgumentException($"the descriptor table must be 16-byte aligned; got 0x{DescAddress:x}", nameof(DescAddress));
        if (AvailAddress % 2 != 0) throw new ArgumentException($"the available ring must be 2-byte aligned; got 0x{AvailAddress:x}", nameof(AvailAddress));
        if (UsedAddress % 4 != 0) throw new ArgumentException($"the used ring must be 4-byte aligned; got 0x{UsedAddress:x}", nameof(UsedAddress));
        Wraps(DescAddress, DescBytes(Size), "descriptor table");
        Wraps(AvailAddress, AvailBytes(Size), "available ring");
        Wraps(UsedAddress, UsedBytes(Size), "used ring");
    }

    /// <summary>A power of two from 1 to 32768 (what a split ring may have).</summary>
    public static bool IsValidSize(int size) => size is >= 1 and <= VirtqConst.MaxQueueSize && (size & (size - 1)) == 0;

    /// <inheritdoc/>
    public override string ToString() => $"split ring of {Size}: desc 0x{DescAddress:x}, avail 0x{AvailAddress:x}, used 0x{UsedAddress:x}";

    static void CheckSize(int size)
    {
        if (!IsValidSize(size))
            throw new ArgumentOutOfRangeException(nameof(size), $"a split virtqueue's size must be a power of two from 1 to {VirtqConst.MaxQueueSize}; got {size}");
    }

    static void CheckUsedAlign(int align)
    {
        if (align < 4 || (align & (align - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(align), $"the used ring's alignment must be a power of two ≥ 4 (4 for virtio 1.x, 4096 legacy); got {align}");
    }

    static void Wraps(ulong at, long bytes, string what)
    {
        if (at + (ulong)(bytes - 1) < at) throw new ArgumentException($"the {what} at 0x{at:x} ({bytes} bytes) wraps past the end of the 64-bit address space");
    }

    static long AlignUp(long v, long a) => (v + a - 1) & ~(a - 1);
}
