using System.Runtime.CompilerServices;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Virtio;

/// <summary>What a hostile or buggy driver did to a virtqueue (each refused like QEMU/vhost refuse it, and counted).</summary>
public enum VirtqErrorKind
{
    /// <summary>A descriptor index (head, next, or inside an indirect table) ≥ the queue size (or the table's length).</summary>
    DescriptorIndex,
    /// <summary>A chain with more descriptors than the queue size (or its indirect table) holds: a loop.</summary>
    ChainTooLong,
    /// <summary>An INDIRECT descriptor inside an indirect table.</summary>
    NestedIndirect,
    /// <summary>An indirect table whose length is 0, not a multiple of 16, or above 65536 entries.</summary>
    IndirectLength,
    /// <summary>A descriptor with both INDIRECT and NEXT set.</summary>
    IndirectWithNext,
    /// <summary>A device-readable descriptor after a device-writable one.</summary>
    ReadableAfterWritable,
    /// <summary>A buffer or an indirect table outside the address space, or without the needed permission.</summary>
    BufferFault,
    /// <summary>The ring itself (descriptor table, available or used ring) is not accessible.</summary>
    RingFault,
    /// <summary>The available index moved by more than the queue size since the device last looked.</summary>
    AvailIndexJump,
    /// <summary>The driver made a head available again while the device still holds it.</summary>
    DuplicateHead,
}

/// <summary>
/// A refused request: the kind, the queue, the head and descriptor index involved (−1 when none), the address and length
/// of the offending buffer, and the memory fault for <see cref="VirtqErrorKind.BufferFault"/>/<see cref="VirtqErrorKind.RingFault"/>.
/// </summary>
public sealed record VirtqError(VirtqErrorKind Kind, string Queue, int Head, int Descriptor, ulong Address, long Length, MemoryFault? Fault, string Message)
{
    /// <summary>The errno vhost/QEMU report for such a ring: EFAULT for memory faults, EINVAL otherwise.</summary>
    public int Errno => Kind is VirtqErrorKind.BufferFault or VirtqErrorKind.RingFault ? Native.Errno.EFAULT : Native.Errno.EINVAL;

    /// <inheritdoc/>
    public override string ToString() => $"{Queue}: {Kind}: {Message}";
}

/// <summary>
/// One translated piece of a buffer: <see cref="Length"/> bytes at <see cref="Address"/> in the queue's address space,
/// contiguous in host memory. A descriptor whose buffer spans two mappings gives two segments.
/// </summary>
public readonly unsafe struct VirtqSegment
{
    internal readonly nint Host;
    internal readonly MemSlot Slot; // whose teardown guard a copy holds

    internal VirtqSegment(ulong address, int length, bool writable, nint host, MemSlot slot)
    {
        Address = address;
        Length = length;
        Writable = writable;
        Host = host;
        Slot = slot;
    }

    /// <summary>Guest-physical address of the segment.</summary>
    public ulong Address { get; }

    /// <summary>Length in bytes.</summary>
    public int Length { get; }

    /// <summary>Device-writable (the driver's "in" buffer) rather than device-readable ("out").</summary>
    public bool Writable { get; }

    /// <summary>
    /// The bytes, valid until the chain is pushed (or the mapping changes). Raw: unlike the chain's copy methods it
    /// does not hold the teardown guard, so the memslot must not be removed while it is in use.
    /// </summary>
    public Span<byte> Span => new((void*)Host, Length);

    /// <inheritdoc/>
    public override string ToString() => $"0x{Address:x}+{Length} {(Writable ? "W" : "R")}";
}

/// <summary>
/// A descriptor chain the device popped: its readable segments, then its writable ones, all translated and checked
/// against the queue's address space. Owned by the device queue and reused for the same head: valid until
/// <see cref="SplitQueueDevice.Push"/>.
/// </summary>
public sealed unsafe class VirtqChain
{
    VirtqSegment[] _segments = new VirtqSegment[4];
    int _count;

    internal VirtqChain(SplitQueueDevice queue, ushort head)
    {
        Queue = queue;
        Head = head;
    }

    /// <summary>The queue the chain came from.</summary>
    public SplitQueueDevice Queue { get; }

    /// <summary>The head descriptor index (the id the device puts in the used ring).</summary>
    public ushort Head { get; }

    /// <summary>Descriptors walked (the ring's, plus an indirect table's entries).</summary>
    public int Descriptors { get; internal set; }

    /// <summary>Whether the chain used an indirect table.</summary>
    public bool Indirect { get; internal set; }

    /// <summary>Number of device-readable segments (they come first).</summary>
    public int ReadableCount { get; private set; }

    /// <summary>Bytes the device may read.</summary>
    public long ReadableBytes { get; private set; }

    /// <summary>Bytes the device may write.</summary>
    public long WritableBytes { get; private set; }

    /// <summary>All segments, readable first.</summary>
    public ReadOnlySpan<VirtqSegment> Segments => _segments.AsSpan(0, _count);

    /// <summary>The device-readable segments.</summary>
    public ReadOnlySpan<VirtqSegment> Readable => _segments.AsSpan(0, ReadableCount);

    /// <summary>The device-writable segments.</summary>
    public ReadOnlySpan<VirtqSegment> Writable => _segments.AsSpan(ReadableCount, _count - ReadableCount);

    /// <summary>Whether the device holds it (popped, not yet pushed).</summary>
    public bool InFlight { get; internal set; }

    /// <summary>Copies readable bytes from <paramref name="offset"/> into <paramref name="destination"/>; returns the bytes copied (fewer at the end).</summary>
    public int ReadReadable(long offset, Span<byte> destination)
    {
        // One readable segment (the common request) is copied here; Copy walks the general case.
        if (ReadableCount == 1 && (ulong)offset < (ulong)_segments[0].Length) return CopyOne(_segments[0], Queue.Space, (int)offset, destination, toGuest: false);
        return Copy(_segments.AsSpan(0, ReadableCount), Queue.Space, offset, destination, toGuest: false);
    }

    /// <summary>Copies <paramref name="source"/> into the writable bytes from <paramref name="offset"/> on; returns the bytes copied (fewer at the end).</summary>
    public int WriteWritable(long offset, ReadOnlySpan<byte> source)
    {
        var data = MemoryMarshalHelper.AsWritable(source);
        if (_count - ReadableCount == 1 && (ulong)offset < (ulong)_segments[ReadableCount].Length)
            return CopyOne(_segments[ReadableCount], Queue.Space, (int)offset, data, toGuest: true);
        return Copy(_segments.AsSpan(ReadableCount, _count - ReadableCount), Queue.Space, offset, data, toGuest: true);
    }

    /// <summary>Copies between one segment (from <paramref name="offset"/> &lt; its length) and <paramref name="data"/> under the teardown guard.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    int CopyOne(in VirtqSegment s, AddressSpace space, int offset, Span<byte> data, bool toGuest)
    {
        var n = Math.Min(s.Length - offset, data.Length);
        var guest = new Span<byte>((void*)(s.Host + offset), n);
        using (Enter(s, space))
        {
            if (toGuest) data[..n].CopyTo(guest);
            else guest.CopyTo(data);
        }
        return n;
    }

    /// <summary>Reads a <typeparamref name="T"/> from the readable bytes at <paramref name="offset"/> (it may span segments).</summary>
    public T Read<T>(long offset) where T : unmanaged
    {
        T v = default;
        var span = new Span<byte>(&v, sizeof(T));
        if (ReadReadable(offset, span) != sizeof(T))
            throw new ArgumentOutOfRangeException(nameof(offset), $"reading {sizeof(T)} bytes at {offset} runs past the chain's {ReadableBytes} readable bytes");
        return v;
    }

    /// <summary>Writes a <typeparamref name="T"/> into the writable bytes at <paramref name="offset"/>.</summary>
    public void Write<T>(long offset, T value) where T : unmanaged
    {
        if (WriteWritable(offset, new ReadOnlySpan<byte>(&value, sizeof(T))) != sizeof(T))
            throw new ArgumentOutOfRangeException(nameof(offset), $"writing {sizeof(T)} bytes at {offset} runs past the chain's {WritableBytes} writable bytes");
    }

    /// <inheritdoc/>
    public override string ToString()
        => $"head {Head}: {Descriptors} desc{(Indirect ? " (indirect)" : "")}, {ReadableBytes} B readable in {ReadableCount} seg, {WritableBytes} B writable in {_count - ReadableCount} seg";

    // ---- filled by the device queue ----

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Reset()
    {
        _count = 0;
        ReadableCount = 0;
        ReadableBytes = 0;
        WritableBytes = 0;
        Descriptors = 0;
        Indirect = false;
    }

    /// <summary>Makes this the chain of one descriptor (what Reset then Add do, in fewer stores).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void SetSingle(ulong address, int length, bool writable, nint host, MemSlot slot)
    {
        _segments[0] = new VirtqSegment(address, length, writable, host, slot);
        _count = 1;
        ReadableCount = writable ? 0 : 1;
        ReadableBytes = writable ? 0 : length;
        WritableBytes = writable ? length : 0;
        Descriptors = 1;
        Indirect = false;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal void Add(ulong address, int length, bool writable, nint host, MemSlot slot)
    {
        if (_count == _segments.Length) Array.Resize(ref _segments, _count * 2);
        _segments[_count++] = new VirtqSegment(address, length, writable, host, slot);
        if (writable) WritableBytes += length;
        else
        {
            ReadableCount++;
            ReadableBytes += length;
        }
    }

    /// <summary>
    /// Copies this chain's readable bytes into <paramref name="destination"/>'s writable bytes, segment to segment (a
    /// device moving a request between queues, e.g. a loopback NIC); returns the bytes copied (the shorter of the two).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public long CopyReadableTo(VirtqChain destination)
    {
        ArgumentNullException.ThrowIfNull(destination);
        var src = Readable;
        var dst = destination.Writable;
        int si = 0, di = 0, so = 0, dOff = 0;
        long total = 0;
        while (si < src.Length && di < dst.Length)
        {
            ref readonly var s = ref src[si];
            ref readonly var d = ref dst[di];
            int n = Math.Min(s.Length - so, d.Length - dOff);
            // Both slots stay mapped for the copy (two announcements of the teardown guard).
            using (Enter(s, Queue.Space))
            using (destination.Enter(d, destination.Queue.Space))
                new ReadOnlySpan<byte>((void*)(s.Host + so), n).CopyTo(new Span<byte>((void*)(d.Host + dOff), n));
            total += n;
            so += n;
            dOff += n;
            if (so == s.Length) { si++; so = 0; }
            if (dOff == d.Length) { di++; dOff = 0; }
        }
        return total;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    int Copy(ReadOnlySpan<VirtqSegment> segs, AddressSpace space, long offset, Span<byte> data, bool toGuest)
    {
        if (offset < 0) NegativeOffset(offset);
        int done = 0;
        foreach (ref readonly var s in segs)
        {
            if (done == data.Length) break;
            if (offset >= s.Length)
            {
                offset -= s.Length;
                continue;
            }
            var n = (int)Math.Min(s.Length - offset, data.Length - done);
            var guest = new Span<byte>((void*)(s.Host + (nint)offset), n);
            using (Enter(s, space))
            {
                if (toGuest) data.Slice(done, n).CopyTo(guest);
                else guest.CopyTo(data.Slice(done, n));
            }
            done += n;
            offset = 0;
        }
        return done;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn, MethodImpl(MethodImplOptions.NoInlining)]
    static void NegativeOffset(long offset) => throw new ArgumentOutOfRangeException(nameof(offset), $"offset must not be negative; got {offset}");

    /// <summary>
    /// Announces the segment's memslot to the teardown guard for a copy (RemoveSlot / ResizeSlot / VM dispose wait for
    /// it); throws <see cref="MemoryFaultException"/> (reason Disposed) when the slot went away since the pop.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    SlotGuard.Use Enter(in VirtqSegment s, AddressSpace space)
    {
        // The chain's own slot in its queue's shared table (no thread-local lookup); a second concurrent use of the
        // same chain falls back to the thread's table.
        if (!SlotGuard.TryEnterShared(Queue.GuardSlots, Head, s.Slot.Serial, out var use)) use = SlotGuard.Enter(s.Slot.Serial);
        if (s.Slot.Removed)
        {
            use.Dispose();
            Gone(s, space);
        }
        return use;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    static void Gone(in VirtqSegment s, AddressSpace space) => throw new MemoryFaultException(
        new MemoryFault(space, s.Address, s.Address, s.Length, s.Writable ? MemoryAccess.Write : MemoryAccess.Read, MemoryFaultReason.Disposed));
}

static class MemoryMarshalHelper
{
    /// <summary>A read-only span as Span for the shared copy loop (only read from when copying towards the guest).</summary>
    public static Span<byte> AsWritable(ReadOnlySpan<byte> s) => System.Runtime.InteropServices.MemoryMarshal.CreateSpan(
        ref System.Runtime.InteropServices.MemoryMarshal.GetReference(s), s.Length);
}
