using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Virtio;

/// <summary>A buffer a driver adds: <see cref="Length"/> bytes at <see cref="Address"/> in the device's address space.</summary>
public readonly record struct VirtqBuffer(ulong Address, uint Length)
{
    public override string ToString() => $"0x{Address:x}+{Length}";
}

/// <summary>A used buffer the driver collected: the chain's head, the bytes the device wrote, and the token given to Add.</summary>
public readonly record struct UsedBuffer(ushort Head, uint Length, ulong Token);

/// <summary>
/// Where the driver keeps indirect descriptor tables: <see cref="EntriesPerChain"/> descriptors (16 bytes each) per head,
/// the table of head h at <see cref="Address"/> + h · EntriesPerChain · 16, in the driver's space.
/// <see cref="Bytes"/> tells how much memory a queue of a given size needs.
/// </summary>
public readonly record struct IndirectArea(ulong Address, int EntriesPerChain)
{
    public long Bytes(int queueSize) => (long)queueSize * EntriesPerChain * VirtqConst.DescSize;
}

/// <summary>
/// The driver side of a split virtqueue (what Linux's virtio_ring does for a guest driver): adds chains of readable then
/// writable buffers (through an indirect table when INDIRECT_DESC is negotiated and an <see cref="IndirectArea"/> is
/// given), kicks when the device wants it (avail_event with EVENT_IDX, else the NO_NOTIFY flag), collects used buffers
/// with their written length, and suppresses interrupts (NO_INTERRUPT, or used_event with EVENT_IDX).
/// <para>
/// The ring (and the indirect area) are in <see cref="SplitQueue.Space"/> as the driver sees it — normally the
/// guest-physical space; the buffer addresses it puts in descriptors are the device's addresses (IOVAs behind an
/// IOMMU) and are not translated here. Construction zeroes the ring. One thread at a time uses a driver queue.
/// </para>
/// </summary>
public sealed unsafe class SplitQueueDriver : SplitQueue
{
    /// <summary>
    /// A driver queue on <paramref name="layout"/> in <paramref name="space"/>; zeroes the ring. Throws
    /// <see cref="MemoryFaultException"/> when the ring (or the indirect area) is not read/write accessible there.
    /// </summary>
    public SplitQueueDriver(AddressSpace space, SplitRing layout, VirtioFeatures features, EventNotifier? kick = null,
        IndirectArea? indirect = null, string name = "vq")
        : base(space, layout, features, name, device: false)
    {
        Kick = kick;
        Indirect = indirect;
    }

    /// <summary>Signalled when the driver decides to notify the device (vhost's kickfd).</summary>
    public EventNotifier? Kick { get; set; }

    /// <summary>Where indirect tables go, or null (then every chain uses ring descriptors).</summary>
    public IndirectArea? Indirect { get; }

    /// <summary>Free descriptors in the ring.</summary>
    public int FreeDescriptors => throw new NotImplementedException();

    public override int InFlight => throw new NotImplementedException();

    /// <summary>The driver's avail index (including chains added since the last kick).</summary>
    public ushort AvailIdx => throw new NotImplementedException();

    /// <summary>The next used-ring index the driver will read.</summary>
    public ushort LastUsedIdx => throw new NotImplementedException();

    /// <summary>
    /// Adds a chain: <paramref name="readable"/> buffers (device reads them), then <paramref name="writable"/> ones
    /// (device writes them). <paramref name="indirect"/>: null = use an indirect table when negotiated, configured and the
    /// chain has more than one buffer; true/false to force. The device sees it after <see cref="KickIfNeeded"/>/<see cref="Publish"/>.
    /// Returns false (adding nothing) when there are not enough free descriptors.
    /// </summary>
    public bool TryAdd(ReadOnlySpan<VirtqBuffer> readable, ReadOnlySpan<VirtqBuffer> writable, ulong token, out ushort head, bool? indirect = null)
    {
        throw new NotImplementedException();
    }

    /// <summary>As <see cref="TryAdd"/>; throws <see cref="InvalidOperationException"/> when the ring is full.</summary>
    public ushort Add(ReadOnlySpan<VirtqBuffer> readable, ReadOnlySpan<VirtqBuffer> writable, ulong token = 0, bool? indirect = null)
        => TryAdd(readable, writable, token, out var head, indirect) ? head
            : throw new InvalidOperationException($"{Name}: not enough free descriptors ({FreeDescriptors} free of {Size}); collect used buffers first");

    /// <summary>Adds a chain of one buffer.</summary>
    public bool TryAdd(VirtqBuffer buffer, bool deviceWritable, ulong token, out ushort head)
        => deviceWritable ? TryAdd([], [buffer], token, out head) : TryAdd([buffer], [], token, out head);

    /// <summary>Makes the chains added so far visible to the device (publishes avail idx) without deciding on a kick.</summary>
    public void Publish()
    {
        throw new NotImplementedException();
    }

    /// <summary>
    /// Publishes the added chains and kicks the device through <see cref="Kick"/> if it wants one (virtqueue_kick):
    /// EVENT_IDX — the new avail idx passed avail_event; otherwise — NO_NOTIFY is clear. Returns whether it kicked.
    /// Nothing added since the last kick: returns false and counts nothing.
    /// </summary>
    public bool KickIfNeeded()
    {
        throw new NotImplementedException();
    }

    /// <summary>Takes the next used buffer; false when there is none.</summary>
    public bool TryGetUsed(out UsedBuffer used)
    {
        throw new NotImplementedException();
    }

    /// <summary>Takes up to <paramref name="into"/>.Length used buffers (reading the used index once); returns how many.</summary>
    public int GetUsed(Span<UsedBuffer> into)
    {
        int n = 0;
        while (n < into.Length && TryGetUsed(out into[n])) n++;
        return n;
    }

    /// <summary>Asks the device not to interrupt (NO_INTERRUPT; with EVENT_IDX used_event is moved out of reach).</summary>
    public void DisableInterrupts()
    {
        throw new NotImplementedException();
    }

    /// <summary>
    /// Asks the device to interrupt on the next used buffer (used_event = last used idx with EVENT_IDX, else clears
    /// NO_INTERRUPT), then re-reads the used index: true when used buffers are already pending (collect them before sleeping).
    /// </summary>
    public bool EnableInterrupts()
    {
        throw new NotImplementedException();
    }

    public override IRenderable ChainsInFlight() => throw new NotImplementedException();

    public override IRenderable ToRenderable() => throw new NotImplementedException();
}
