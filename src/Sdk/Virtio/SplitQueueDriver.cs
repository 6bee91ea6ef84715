using System.Runtime.CompilerServices;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Virtio;

/// <summary>A buffer a driver adds: <see cref="Length"/> bytes at <see cref="Address"/> in the device's address space.</summary>
public readonly record struct VirtqBuffer(ulong Address, uint Length)
{
    /// <inheritdoc/>
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
    /// <summary>Bytes of indirect tables for a queue of <paramref name="queueSize"/>.</summary>
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
        _autoIndirectMax = IndirectDesc && indirect is { } a ? a.EntriesPerChain : 0;
        var n = layout.Size;
        _next = new ushort[n];
        _heads = new HeadState[n];
        for (int i = 0; i < n; i++) _next[i] = (ushort)(i + 1);
        _numFree = n;
        if (indirect is { } ia)
        {
            if (ia.EntriesPerChain is < 1 or > VirtqConst.MaxIndirectEntries)
                throw new ArgumentOutOfRangeException(nameof(indirect), $"an indirect table holds 1 … {VirtqConst.MaxIndirectEntries} entries; got {ia.EntriesPerChain}");
            if (ia.Address % 16 != 0) throw new ArgumentException($"indirect tables must be 16-byte aligned; got 0x{ia.Address:x}", nameof(indirect));
        }
        EnsureRing();
        // The driver owns the ring memory: it starts zeroed (flags, indexes, event fields).
        new Span<byte>(ring.Desc, (int)SplitRing.DescBytes(n)).Clear();
        new Span<byte>(ring.Avail, (int)SplitRing.AvailBytes(n)).Clear();
        new Span<byte>(ring.Used, (int)SplitRing.UsedBytes(n)).Clear();
    }

    readonly ushort[] _next;      // the driver's own copy of each free/chained descriptor's next (never read back from the ring)
    readonly HeadState[] _heads;  // per head: what add and get need, in one cache line's part
    readonly int _autoIndirectMax; // chains of 2 … this many buffers go indirect by default (0: never)
    int _freeHead, _numFree, _inFlight;
    ushort _availShadow, _lastKickAvail, _lastUsed, _usedSeen;
    bool _interruptsDisabled, _usedEventStored;
    byte* _indirectHost;
    long _indirectGeneration = long.MinValue, _indirectEpoch = -1;

    struct HeadState
    {
        public ulong Token;
        public ushort DescCount; // ring descriptors used by the chain at this head
        public bool InUse;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void EnsureRing()
    {
        if (!ring.Current) RevalidateRing();
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    void RevalidateRing()
    {
        if (!ring.Ensure(out var problem, out var fault))
            throw fault.Space is null ? new InvalidOperationException($"{Name}: {problem}") : new MemoryFaultException(fault);
    }

    /// <summary>The indirect area's host bytes; call after <see cref="EnsureRing"/> (its epoch validates them too).</summary>
    byte* IndirectTables()
    {
        if (_indirectEpoch == ring.Epoch) return _indirectHost;
        var ia = Indirect!.Value;
        var gen = Space.Generation;
        if (gen != _indirectGeneration)
        {
            var bytes = ia.Bytes(Size);
            if (bytes > int.MaxValue) throw new ArgumentException($"{Name}: the indirect area ({bytes} bytes) must be below 2 GiB");
            if (!Space.TryGetSpan(ia.Address, (int)bytes, MemoryAccess.ReadWrite, out var span, out var f))
                throw f.Space is null
                    ? new InvalidOperationException($"{Name}: the indirect area [0x{ia.Address:x}, +{bytes}) spans two mappings; place it in one")
                    : new MemoryFaultException(f);
            _indirectHost = (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref span[0]);
            _indirectGeneration = gen;
        }
        _indirectEpoch = ring.Epoch;
        return _indirectHost;
    }

    /// <summary>Signalled when the driver decides to notify the device (vhost's kickfd).</summary>
    public EventNotifier? Kick { get; set; }

    /// <summary>Where indirect tables go, or null (then every chain uses ring descriptors).</summary>
    public IndirectArea? Indirect { get; }

    /// <summary>Free descriptors in the ring.</summary>
    public int FreeDescriptors => _numFree;

    /// <inheritdoc/>
    public override int InFlight => _inFlight;

    /// <summary>The driver's avail index (including chains added since the last kick).</summary>
    public ushort AvailIdx => _availShadow;

    /// <summary>The next used-ring index the driver will read.</summary>
    public ushort LastUsedIdx => _lastUsed;

    /// <summary>
    /// Adds a chain: <paramref name="readable"/> buffers (device reads them), then <paramref name="writable"/> ones
    /// (device writes them). <paramref name="indirect"/>: null = use an indirect table when negotiated, configured and the
    /// chain has more than one buffer; true/false to force. The device sees it after <see cref="KickIfNeeded"/>/<see cref="Publish"/>.
    /// Returns false (adding nothing) when there are not enough free descriptors.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public bool TryAdd(ReadOnlySpan<VirtqBuffer> readable, ReadOnlySpan<VirtqBuffer> writable, ulong token, out ushort head, bool? indirect = null)
    {
        // A chain of one buffer in one ring descriptor (the common request) skips the general path and its frame.
        if (readable.Length + writable.Length == 1 && indirect != true)
            return TryAddOne(readable.Length == 0 ? writable[0] : readable[0], readable.Length == 0, token, out head);
        return TryAddChain(readable, writable, token, out head, indirect);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    bool TryAddOne(VirtqBuffer b, bool deviceWritable, ulong token, out ushort head)
    {
        if (_numFree == 0)
        {
            head = 0;
            return false;
        }
        EnsureRing();
        int h = _freeHead;
        head = (ushort)h;
        Put(ref ((SplitQueueDevice.Desc*)ring.Desc)[h], b, deviceWritable ? VirtqConst.DescFWrite : 0, 0);
        _freeHead = _next[h];
        _numFree--;
        ref var state = ref _heads[h];
        state.DescCount = 1;
        state.Token = token;
        state.InUse = true;
        _inFlight++;
        ring.AvailRing(_availShadow & mask) = (ushort)h;
        _availShadow++;
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    bool TryAddChain(ReadOnlySpan<VirtqBuffer> readable, ReadOnlySpan<VirtqBuffer> writable, ulong token, out ushort head, bool? indirect)
    {
        int total = readable.Length + writable.Length;
        bool useIndirect = indirect ?? (total > 1 && total <= _autoIndirectMax);
        if (total == 0 || useIndirect || total > Size) CheckChain(total, useIndirect); // throws for a chain that may not be added
        int needed = useIndirect ? 1 : total;
        if (_numFree < needed)
        {
            head = 0;
            return false;
        }
        EnsureRing();
        head = (ushort)_freeHead;
        var desc = (SplitQueueDevice.Desc*)ring.Desc;
        if (useIndirect)
        {
            WriteIndirect(desc, head, readable, writable, total);
            _freeHead = _next[head];
        }
        else if (total == 1)
        {
            var w = readable.Length == 0;
            var b = w ? writable[0] : readable[0];
            Put(ref desc[head], b, w ? VirtqConst.DescFWrite : 0, 0);
            _freeHead = _next[head];
        }
        else
        {
            int i = _freeHead;
            for (int k = 0; k < total; k++)
            {
                var w = k >= readable.Length;
                var b = w ? writable[k - readable.Length] : readable[k];
                Put(ref desc[i], b, (k < total - 1 ? VirtqConst.DescFNext : 0) | (w ? VirtqConst.DescFWrite : 0), k < total - 1 ? _next[i] : 0);
                i = _next[i];
            }
            _freeHead = i;
        }
        _numFree -= needed;
        ref var h = ref _heads[head];
        h.DescCount = (ushort)needed;
        h.Token = token;
        h.InUse = true;
        _inFlight++;
        ring.AvailRing(_availShadow & mask) = head;
        _availShadow++;
        return true;
    }

    /// <summary>Fills head's indirect table with the chain and points the ring descriptor at it.</summary>
    void WriteIndirect(SplitQueueDevice.Desc* desc, ushort head, ReadOnlySpan<VirtqBuffer> readable, ReadOnlySpan<VirtqBuffer> writable, int total)
    {
        var ia = Indirect!.Value;
        var table = (SplitQueueDevice.Desc*)(IndirectTables() + (long)head * ia.EntriesPerChain * VirtqConst.DescSize);
        for (int k = 0; k < total; k++)
        {
            var w = k >= readable.Length;
            var b = w ? writable[k - readable.Length] : readable[k];
            Put(ref table[k], b, (k < total - 1 ? VirtqConst.DescFNext : 0) | (w ? VirtqConst.DescFWrite : 0), k + 1);
        }
        Put(ref desc[head], new VirtqBuffer(ia.Address + (ulong)head * (ulong)ia.EntriesPerChain * VirtqConst.DescSize, (uint)(total * VirtqConst.DescSize)),
            VirtqConst.DescFIndirect, 0);
    }

    /// <summary>
    /// Writes a descriptor as two 8-byte stores. (A struct built on the stack and copied in 16 bytes made the CPU
    /// stall: its load of four smaller stores cannot be forwarded.)
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static void Put(ref SplitQueueDevice.Desc d, VirtqBuffer b, int flags, int next)
    {
        ref var words = ref Unsafe.As<SplitQueueDevice.Desc, ulong>(ref d);
        words = b.Address;
        Unsafe.Add(ref words, 1) = b.Length | (ulong)(ushort)flags << 32 | (ulong)(ushort)next << 48;
    }

    /// <summary>Throws for a chain that may not be added (no buffers, indirect when not possible, longer than the queue or table).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    void CheckChain(int total, bool useIndirect)
    {
        if (total == 0) throw new ArgumentException($"{Name}: a chain needs at least one buffer");
        if (useIndirect)
        {
            if (!IndirectDesc) throw new InvalidOperationException($"{Name}: VIRTIO_RING_F_INDIRECT_DESC was not negotiated; the driver may not use indirect tables");
            if (Indirect is not { } ia) throw new InvalidOperationException($"{Name}: no IndirectArea was given to this driver queue");
            if (total > ia.EntriesPerChain)
                throw new ArgumentException($"{Name}: a chain of {total} buffers does not fit an indirect table of {ia.EntriesPerChain} entries");
        }
        else if (total > Size)
            throw new ArgumentException($"{Name}: a chain of {total} buffers is longer than the queue size {Size} (use indirect descriptors)");
    }

    /// <summary>As <see cref="TryAdd(ReadOnlySpan{VirtqBuffer}, ReadOnlySpan{VirtqBuffer}, ulong, out ushort, bool?)"/>; throws <see cref="InvalidOperationException"/> when the ring is full.</summary>
    public ushort Add(ReadOnlySpan<VirtqBuffer> readable, ReadOnlySpan<VirtqBuffer> writable, ulong token = 0, bool? indirect = null)
        => TryAdd(readable, writable, token, out var head, indirect) ? head
            : throw new InvalidOperationException($"{Name}: not enough free descriptors ({FreeDescriptors} free of {Size}); collect used buffers first");

    /// <summary>Adds a chain of one buffer.</summary>
    public bool TryAdd(VirtqBuffer buffer, bool deviceWritable, ulong token, out ushort head) => TryAddOne(buffer, deviceWritable, token, out head);

    /// <summary>Makes the chains added so far visible to the device (publishes avail idx) without deciding on a kick.</summary>
    public void Publish()
    {
        EnsureRing();
        Volatile.Write(ref ring.AvailIdx(), _availShadow); // release: descriptors and ring entries before the index
    }

    /// <summary>
    /// Publishes the added chains and kicks the device through <see cref="Kick"/> if it wants one (virtqueue_kick):
    /// EVENT_IDX — the new avail idx passed avail_event; otherwise — NO_NOTIFY is clear. Returns whether it kicked.
    /// Nothing added since the last kick: returns false and counts nothing.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public bool KickIfNeeded()
    {
        if (_availShadow == _lastKickAvail) return false;
        Publish();
        Interlocked.MemoryBarrier(); // the index store before the avail_event / flags load (the device does the mirror image)
        var need = EventIdx
            ? VirtqConst.NeedEvent(Volatile.Read(ref ring.AvailEvent()), _availShadow, _lastKickAvail)
            : (Volatile.Read(ref ring.UsedFlags()) & VirtqConst.UsedFNoNotify) == 0;
        _lastKickAvail = _availShadow;
        CountNotification(need, Kick);
        return need;
    }

    /// <summary>Takes the next used buffer; false when there is none.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public bool TryGetUsed(out UsedBuffer used)
    {
        used = default;
        EnsureRing();
        if (_lastUsed == _usedSeen)
        {
            if (_usedEventStored)
            {
                Interlocked.MemoryBarrier(); // our used_event store before the used idx load
                _usedEventStored = false;
            }
            var idx = Volatile.Read(ref ring.UsedIdx()); // acquire: the elements before the index
            if ((ushort)(idx - _lastUsed) > _inFlight) UsedJump(idx);
            _usedSeen = idx;
            if (_lastUsed == _usedSeen) return false;
        }
        var e = ring.UsedElem(_lastUsed & mask);
        uint id = (uint)e, len = (uint)(e >> 32);
        if (id >= (uint)Size || !_heads[id].InUse) NotInFlight(id);
        ref var h = ref _heads[id];
        // Free the chain's descriptors, following the driver's own next links.
        int last = (int)id;
        for (int k = 1; k < h.DescCount; k++) last = _next[last];
        _next[last] = (ushort)_freeHead;
        _freeHead = (int)id;
        _numFree += h.DescCount;
        h.InUse = false;
        _inFlight--;
        _lastUsed++;
        if (EventIdx && !_interruptsDisabled)
        {
            Volatile.Write(ref ring.UsedEvent(), _lastUsed); // interrupt me on the next used buffer
            _usedEventStored = true;
        }
        used = new UsedBuffer((ushort)id, len, h.Token);
        return true;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn, MethodImpl(MethodImplOptions.NoInlining)]
    void UsedJump(ushort idx)
        => throw new InvalidDataException($"{Name}: the device moved used idx from {_lastUsed} to {idx}, more than the {_inFlight} chain(s) in flight");

    [System.Diagnostics.CodeAnalysis.DoesNotReturn, MethodImpl(MethodImplOptions.NoInlining)]
    void NotInFlight(uint id)
        => throw new InvalidDataException($"{Name}: used ring entry {_lastUsed & mask} returns head {id}, which is not in flight");

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
        // Already off (Linux's flags shadow): no store. With EVENT_IDX used_event stays at the value parked then, which
        // the used idx passes only after a wrap of the index, as it would from here.
        if (_interruptsDisabled) return;
        EnsureRing();
        _interruptsDisabled = true;
        if (EventIdx) Volatile.Write(ref ring.UsedEvent(), (ushort)(_lastUsed - 1)); // already passed: never crossed while ≤ Size chains are in flight
        else Volatile.Write(ref ring.AvailFlags(), (ushort)(ring.AvailFlags() | VirtqConst.AvailFNoInterrupt));
    }

    /// <summary>
    /// Asks the device to interrupt on the next used buffer (used_event = last used idx with EVENT_IDX, else clears
    /// NO_INTERRUPT), then re-reads the used index: true when used buffers are already pending (collect them before sleeping).
    /// </summary>
    public bool EnableInterrupts()
    {
        EnsureRing();
        _interruptsDisabled = false;
        if (EventIdx) Volatile.Write(ref ring.UsedEvent(), _lastUsed);
        else Volatile.Write(ref ring.AvailFlags(), (ushort)(ring.AvailFlags() & ~VirtqConst.AvailFNoInterrupt));
        Interlocked.MemoryBarrier();
        _usedEventStored = false;
        return Volatile.Read(ref ring.UsedIdx()) != _lastUsed;
    }

    /// <summary>
    /// Asks the device to interrupt once <paramref name="count"/> more buffers are used (virtqueue_enable_cb_delayed with
    /// a count the driver knows will complete): with EVENT_IDX used_event = last used idx + count − 1; without it this is
    /// <see cref="EnableInterrupts"/> (the flag cannot delay). True when that many are already pending (collect them
    /// before sleeping). <paramref name="count"/> must not exceed the buffers that will complete, or no interrupt comes.
    /// </summary>
    public bool EnableInterruptsAfter(int count)
    {
        if (count < 1 || count > _inFlight)
            throw new ArgumentOutOfRangeException(nameof(count), $"{Name}: interrupt after 1 … {_inFlight} (the chains in flight) used buffers; got {count}");
        if (!EventIdx || count == 1) return EnableInterrupts();
        EnsureRing();
        _interruptsDisabled = false;
        Volatile.Write(ref ring.UsedEvent(), (ushort)(_lastUsed + count - 1));
        Interlocked.MemoryBarrier(); // our used_event store before the used idx load (the device: its idx store before its event load)
        _usedEventStored = false;
        return (ushort)(Volatile.Read(ref ring.UsedIdx()) - _lastUsed) >= count;
    }

    /// <inheritdoc/>
    public override IRenderable ChainsInFlight()
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"{Name}: chains the driver has in flight")) };
        t.AddColumn("head").AddColumn("descriptors").AddColumn("token");
        for (int h = 0; h < Size; h++)
            if (_heads[h].InUse)
            {
                var ind = IndirectDesc && _heads[h].DescCount == 1 && Peek16(Ring.DescAddress + (ulong)h * 16 + 12) is { } f && (f & VirtqConst.DescFIndirect) != 0;
                t.AddRow(h.ToString(), ind ? "1 (indirect table)" : _heads[h].DescCount.ToString(), _heads[h].Token.ToString());
            }
        return t;
    }

    /// <inheritdoc/>
    public override IRenderable ToRenderable()
    {
        var t = NewTable("driver");
        t.AddRow("driver avail idx (published)", $"{_availShadow} ({Show(Peek16(Ring.AvailAddress + 2))})");
        t.AddRow("driver last used idx", _lastUsed.ToString());
        if (EventIdx)
        {
            t.AddRow("avail_event (device last seen)", Show(Peek16(Ring.UsedAddress + 4 + 8UL * (ulong)Size)));
            t.AddRow("used_event", Show(Peek16(Ring.AvailAddress + 4 + 2UL * (ulong)Size)));
        }
        t.AddRow("free descriptors", $"{_numFree} of {Size}");
        t.AddRow("in flight", _inFlight.ToString());
        t.AddRow("kicks sent / suppressed", $"{NotificationsSent:N0} / {NotificationsSuppressed:N0}");
        t.AddRow("interrupts", _interruptsDisabled ? "disabled" : "enabled");
        return t;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: driver side, size {Size}, avail {_availShadow}, last used {_lastUsed}, in flight {_inFlight}";
}
