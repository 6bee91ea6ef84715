using System.Runtime.CompilerServices;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Virtio;

/// <summary>
/// The device side of a split virtqueue (what vhost and QEMU's virtqueue_pop/push do): pops available chains as
/// translated, permission-checked segments of its address space, pushes used entries with the written length, and
/// decides whether to interrupt the driver (used_event with EVENT_IDX, else the NO_INTERRUPT flag).
/// <para>
/// The ring is written by a driver the device does not trust. Every malformed chain (see <see cref="VirtqErrorKind"/>) is
/// refused with a <see cref="VirtqError"/>, counted, and marks the queue broken: <see cref="TryPop"/> then returns false
/// until <see cref="Reset"/>, and the device model should set <see cref="VirtioDeviceStatus.NeedsReset"/>. Nothing outside
/// mapped memory is ever read or written, and no exception escapes for anything the driver wrote.
/// </para>
/// One thread at a time uses a device queue (the device's thread); the driver may run on another.
/// </summary>
public sealed unsafe class SplitQueueDevice : SplitQueue
{
    readonly VirtqChain?[] _chains;
    readonly long[] _errorCounts = new long[Enum.GetValues<VirtqErrorKind>().Length];
    byte[] _indirectScratch = []; // pinned copy of the indirect table being walked (the driver cannot change it under us)
    ushort _lastAvail, _shadowAvail, _usedShadow, _usedPublished, _signalledUsed;
    bool _signalledValid, _initialised, _kicksEnabled = true;
    int _inFlight;
    VirtqError? _error;
    HostExtent _tlb;         // the last translation (see Translate)
    long _tlbEpoch = -1;

    /// <summary>
    /// A device queue on <paramref name="layout"/> in <paramref name="space"/>. <paramref name="lastAvailIdx"/> is where the
    /// device starts reading the available ring (VHOST_SET_VRING_BASE); the used index starts at the ring's current value.
    /// Nothing is read until the first <see cref="TryPop"/>.
    /// </summary>
    public SplitQueueDevice(AddressSpace space, SplitRing layout, VirtioFeatures features, EventNotifier? call = null,
        string name = "vq", ushort lastAvailIdx = 0)
        : base(space, layout, features, name, device: true)
    {
        Call = call;
        _chains = new VirtqChain?[layout.Size];
        GuardSlots = SlotGuard.NewSharedSlots(layout.Size);
        _lastAvail = _shadowAvail = lastAvailIdx;
    }

    /// <summary>The teardown-guard slot of each head's chain (see <see cref="VirtqChain"/>'s copies).</summary>
    internal readonly long[] GuardSlots;

    /// <summary>Signalled when the device decides to interrupt the driver (vhost's callfd).</summary>
    public EventNotifier? Call { get; set; }

    /// <summary>The next available-ring index the device will read (last_avail_idx; VHOST_GET_VRING_BASE).</summary>
    public ushort LastAvailIdx => _lastAvail;

    /// <summary>The used index the device has written so far (published by <see cref="Flush"/>).</summary>
    public ushort UsedIdx => _usedShadow;

    /// <inheritdoc/>
    public override int InFlight => _inFlight;

    /// <summary>True after a malformed chain: the queue pops nothing until <see cref="Reset"/>.</summary>
    public bool IsBroken => _error is not null;

    /// <summary>The error that broke the queue, or null.</summary>
    public VirtqError? Error => _error;

    /// <summary>Raised (on the device thread) when the queue breaks, so the device model can set NEEDS_RESET.</summary>
    public event Action<SplitQueueDevice, VirtqError>? Broken;

    /// <summary>How many errors of <paramref name="kind"/> this queue has seen (kept across <see cref="Reset"/>).</summary>
    public long ErrorCount(VirtqErrorKind kind) => Volatile.Read(ref _errorCounts[(int)kind]);

    /// <summary>Every error kind seen, with its count.</summary>
    public IReadOnlyDictionary<VirtqErrorKind, long> Errors
        => Enum.GetValues<VirtqErrorKind>().Where(k => ErrorCount(k) > 0).ToDictionary(k => k, ErrorCount);

    // ---- pop ----------------------------------------------------------------------------------------

    /// <summary>
    /// Takes the next available chain, translated. False when the ring is empty — then, with kick notifications
    /// enabled, the driver has been asked to kick on its next buffer — or when the queue is broken (see <see cref="Error"/>).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public bool TryPop(out VirtqChain chain)
    {
        if (_error is null && EnsureRing() && (_lastAvail != _shadowAvail || Refill()) && PopOne() is { } c)
        {
            chain = c;
            return true;
        }
        chain = null!;
        return false;
    }

    /// <summary>Reads the available index when the entries seen so far are used up; true when there are new ones.</summary>
    bool Refill()
    {
        if (!ReadAvailIdx()) return false;
        if (_lastAvail != _shadowAvail) return true;
        // Empty: ask for a kick, then look once more — the driver may have added a buffer after our read
        // without seeing the request (the store→load race the spec's barrier closes).
        return _kicksEnabled && ArmKick();
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    bool EnsureRing() => ring.Current || RevalidateRing(); // current implies initialised: Reset invalidates the ring

    [MethodImpl(MethodImplOptions.NoInlining)]
    bool RevalidateRing()
    {
        if (!ring.Ensure(out var problem, out var fault))
            return Break(VirtqErrorKind.RingFault, -1, -1, fault.Space is null ? Ring.DescAddress : fault.Address, 0, fault.Space is null ? null : fault, problem!);
        if (!_initialised)
        {
            // vhost_vq_init_access: the used index continues from what the ring holds.
            _usedShadow = _usedPublished = Volatile.Read(ref ring.UsedIdx());
            _initialised = true;
        }
        return true;
    }

    /// <summary>Reads the available index (acquire: ring entries and descriptors written before it are visible).</summary>
    bool ReadAvailIdx()
    {
        var idx = Volatile.Read(ref ring.AvailIdx());
        if ((ushort)(idx - _lastAvail) > Size) return AvailJump(idx);
        _shadowAvail = idx;
        return true;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    bool AvailJump(ushort idx) => Break(VirtqErrorKind.AvailIndexJump, -1, -1, Ring.AvailAddress + 2, 2, null,
        $"the driver moved avail idx from {_lastAvail} to {idx}: {(ushort)(idx - _lastAvail)} new entries, more than the queue size {Size}");

    /// <summary>Requests a kick for the next buffer and re-reads the available index; true when buffers are there now.</summary>
    bool ArmKick()
    {
        if (EventIdx) Volatile.Write(ref ring.AvailEvent(), _shadowAvail);
        else if ((ring.UsedFlags() & VirtqConst.UsedFNoNotify) != 0) Volatile.Write(ref ring.UsedFlags(), (ushort)(ring.UsedFlags() & ~VirtqConst.UsedFNoNotify));
        Interlocked.MemoryBarrier(); // our store before our re-read of avail idx (the driver: its idx store before its event read)
        return ReadAvailIdx() && _lastAvail != _shadowAvail;
    }

    /// <summary>Takes the chain at last_avail_idx (there is one), or null when it is malformed (the queue is broken then).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    VirtqChain? PopOne()
    {
        int slot = _lastAvail & mask;
        var head = ring.AvailRing(slot);
        if (head >= (uint)Size) return BadHead(slot, head, duplicate: false);
        var c = _chains[head] ?? NewChain(head);
        if (c.InFlight) return BadHead(slot, head, duplicate: true);
        // The common chain (one direct descriptor whose buffer lies in the last translation) is taken from one copy of
        // the descriptor without the general walk; anything else is walked from scratch (its own copy).
        var d = Unsafe.ReadUnaligned<Desc>(ring.Desc + (long)head * VirtqConst.DescSize);
        var writable = (d.Flags & VirtqConst.DescFWrite) != 0;
        if ((d.Flags & (VirtqConst.DescFNext | VirtqConst.DescFIndirect)) == 0 && d.Len != 0 && _tlbEpoch == ring.Epoch
            && _tlb.Covers(d.Addr, d.Len, writable ? MemoryAccess.Write : MemoryAccess.Read))
            c.SetSingle(d.Addr, (int)d.Len, writable, _tlb.HostOf(d.Addr), _tlb.Slot);
        else
        {
            c.Reset();
            if (!Walk(c, head)) return null;
        }
        _lastAvail++;
        c.InFlight = true;
        _inFlight++;
        return c;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    VirtqChain NewChain(ushort head) => _chains[head] = new VirtqChain(this, head);

    [MethodImpl(MethodImplOptions.NoInlining)]
    VirtqChain? BadHead(int slot, ushort head, bool duplicate)
    {
        BadHeadError(slot, head, duplicate);
        return null;
    }

    bool BadHeadError(int slot, ushort head, bool duplicate) => duplicate
        ? Break(VirtqErrorKind.DuplicateHead, head, head, Ring.AvailAddress + 4 + 2UL * (ulong)slot, 2, null,
            $"head {head} was made available again while the device still holds it (it was never returned through the used ring)")
        : Break(VirtqErrorKind.DescriptorIndex, head, head, Ring.AvailAddress + 4 + 2UL * (ulong)slot, 2, null,
            $"avail ring entry {slot} names head {head}; descriptor indexes must be below the queue size {Size}");

    /// <summary>Walks and translates the chain at <paramref name="head"/>; every descriptor is copied once out of guest memory before use.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    bool Walk(VirtqChain c, ushort head)
    {
        // Refusals are built in WalkFault (out of line): their messages would otherwise give this loop a large frame to zero per call.
        byte* table = ring.Desc;
        int tableLen = Size;
        ulong tableAddr = Ring.DescAddress;
        bool inIndirect = false, sawWritable = false;
        int i = head, count = 0;
        while (true)
        {
            if (++count > tableLen) return WalkFault(WalkProblem.TooLong, head, i, tableAddr, default, tableLen, inIndirect, default);
            var d = Unsafe.ReadUnaligned<Desc>(table + (long)i * VirtqConst.DescSize);
            c.Descriptors++;
            var where = tableAddr + (ulong)i * VirtqConst.DescSize;
            if ((d.Flags & VirtqConst.DescFIndirect) != 0)
            {
                if (inIndirect) return WalkFault(WalkProblem.Nested, head, i, where, d, tableLen, inIndirect, default);
                if ((d.Flags & VirtqConst.DescFNext) != 0) return WalkFault(WalkProblem.IndirectWithNext, head, i, where, d, tableLen, inIndirect, default);
                if (d.Len == 0 || d.Len % VirtqConst.DescSize != 0 || d.Len / VirtqConst.DescSize > VirtqConst.MaxIndirectEntries)
                    return WalkFault(WalkProblem.IndirectLength, head, i, where, d, tableLen, inIndirect, default);
                if (!ReadIndirect(c, d, out table, out var tf)) return WalkFault(WalkProblem.IndirectFault, head, i, where, d, tableLen, inIndirect, tf);
                tableLen = (int)d.Len / VirtqConst.DescSize;
                tableAddr = d.Addr;
                inIndirect = true;
                c.Indirect = true;
                i = 0;
                count = 0;
                continue;
            }
            var writable = (d.Flags & VirtqConst.DescFWrite) != 0;
            if (writable) sawWritable = true;
            else if (sawWritable) return WalkFault(WalkProblem.ReadableAfterWritable, head, i, where, d, tableLen, inIndirect, default);
            if (d.Len != 0 && !Translate(c, d.Addr, d.Len, writable, out var f))
                return WalkFault(WalkProblem.BufferFault, head, i, where, d, tableLen, inIndirect, f);
            if ((d.Flags & VirtqConst.DescFNext) == 0) return true;
            i = d.Next;
            if (i >= tableLen) return WalkFault(WalkProblem.NextIndex, head, i, where, d, tableLen, inIndirect, default);
        }
    }

    /// <summary>Copies the indirect table <paramref name="d"/> points at into the pinned scratch buffer (the driver cannot change it under us).</summary>
    bool ReadIndirect(VirtqChain c, in Desc d, out byte* table, out MemoryFault fault)
    {
        var bytes = (int)d.Len;
        if (_indirectScratch.Length < bytes) _indirectScratch = GC.AllocateUninitializedArray<byte>(Math.Max(bytes, 4096), pinned: true);
        table = (byte*)Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetArrayDataReference(_indirectScratch));
        // A table inside the last translation is copied from there under the chain's guard slot, as the chain's own
        // copies are; anything else (or a slot removed meanwhile) goes through the space, which faults precisely.
        if (_tlbEpoch == ring.Epoch && _tlb.Covers(d.Addr, d.Len, MemoryAccess.Read))
        {
            var slot = _tlb.Slot;
            if (!SlotGuard.TryEnterShared(GuardSlots, c.Head, slot.Serial, out var use)) use = SlotGuard.Enter(slot.Serial);
            using (use)
            {
                if (!slot.Removed)
                {
                    new ReadOnlySpan<byte>((void*)_tlb.HostOf(d.Addr), bytes).CopyTo(_indirectScratch);
                    fault = default;
                    return true;
                }
            }
        }
        return Space.TryRead(d.Addr, _indirectScratch.AsSpan(0, bytes), out fault);
    }

    enum WalkProblem : byte { TooLong, Nested, IndirectWithNext, IndirectLength, IndirectFault, ReadableAfterWritable, BufferFault, NextIndex }

    [MethodImpl(MethodImplOptions.NoInlining)]
    bool WalkFault(WalkProblem p, ushort head, int i, ulong where, Desc d, int tableLen, bool inIndirect, MemoryFault f) => p switch
    {
        WalkProblem.TooLong => Break(VirtqErrorKind.ChainTooLong, head, i, where, 0, null,
            $"head {head}: the chain has more than {tableLen} descriptors, the {(inIndirect ? "indirect table's length" : "queue size")} (a loop in the next fields?)"),
        WalkProblem.Nested => Break(VirtqErrorKind.NestedIndirect, head, i, where, VirtqConst.DescSize, null,
            $"head {head}: entry {i} of an indirect table is itself INDIRECT; indirect tables may not nest"),
        WalkProblem.IndirectWithNext => Break(VirtqErrorKind.IndirectWithNext, head, i, where, VirtqConst.DescSize, null,
            $"head {head}: descriptor {i} has both INDIRECT and NEXT set; an indirect descriptor must end the chain"),
        WalkProblem.IndirectLength => Break(VirtqErrorKind.IndirectLength, head, i, d.Addr, d.Len, null,
            $"head {head}: descriptor {i} points at an indirect table of {d.Len} bytes; the length must be a non-zero multiple of 16, at most {VirtqConst.MaxIndirectEntries} entries"),
        WalkProblem.IndirectFault => Break(VirtqErrorKind.BufferFault, head, i, d.Addr, d.Len, f, $"head {head}: the indirect table of descriptor {i}: {f}"),
        WalkProblem.ReadableAfterWritable => Break(VirtqErrorKind.ReadableAfterWritable, head, i, where, VirtqConst.DescSize, null,
            $"head {head}: descriptor {i} is device-readable but follows a device-writable one; readable buffers must come first"),
        WalkProblem.BufferFault => Break(VirtqErrorKind.BufferFault, head, i, d.Addr, d.Len, f,
            $"head {head}: descriptor {i}'s {((d.Flags & VirtqConst.DescFWrite) != 0 ? "device-writable" : "device-readable")} buffer [0x{d.Addr:x}, +{d.Len}): {f}"),
        _ => Break(VirtqErrorKind.DescriptorIndex, head, i, where, VirtqConst.DescSize, null,
            $"head {head}: descriptor {(inIndirect ? "in an indirect table " : "")}links to next {i}, outside the {(inIndirect ? $"table's {tableLen} entries" : $"queue of {Size}")}"),
    };

    /// <summary>
    /// Translates a buffer into host-contiguous segments (checking every byte's mapping and permission). The last
    /// translation is cached (one run of the space, valid while the ring's mapping epoch holds): consecutive buffers
    /// of a batch usually lie in the same mapping, so most descriptors cost a range compare instead of a lookup.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    bool Translate(VirtqChain c, ulong addr, uint len, bool writable, out MemoryFault fault)
    {
        var access = writable ? MemoryAccess.Write : MemoryAccess.Read;
        if (_tlbEpoch == ring.Epoch && _tlb.Covers(addr, len, access))
        {
            c.Add(addr, (int)len, writable, _tlb.HostOf(addr), _tlb.Slot);
            fault = default;
            return true;
        }
        return TranslateSlow(c, addr, len, writable, access, out fault);
    }

    bool TranslateSlow(VirtqChain c, ulong addr, uint len, bool writable, MemoryAccess access, out MemoryFault fault)
    {
        if (!Space.CheckRange(addr, len, access, out fault)) return false;
        long left = len;
        var start = addr;
        while (left > 0)
        {
            if (!Space.TryResolveExtent(addr, left, access, out var e, out fault)) return AddressSpace.Reframe(ref fault, start, len);
            var n = Math.Min(e.Contiguous(addr, left), 1L << 30); // a buffer is at most 4 GiB − 1 (u32 len): spans stay int-sized
            c.Add(addr, (int)n, writable, e.HostOf(addr), e.Slot);
            _tlb = e;
            _tlbEpoch = ring.Epoch; // validated before this translation: the extent is at least that new
            addr += (ulong)n;
            left -= n;
        }
        return true;
    }

    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential, Pack = 1)]
    internal struct Desc
    {
        public ulong Addr;
        public uint Len;
        public ushort Flags;
        public ushort Next;
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    bool Break(VirtqErrorKind kind, int head, int descriptor, ulong address, long length, MemoryFault? fault, string message)
    {
        Interlocked.Increment(ref _errorCounts[(int)kind]);
        var e = new VirtqError(kind, Name, head, descriptor, address, length, fault, message);
        _error = e;
        Broken?.Invoke(this, e);
        return false;
    }

    /// <summary>Pops up to <paramref name="into"/>.Length chains (reading the available index once); returns how many.</summary>
    public int Pop(Span<VirtqChain?> into)
    {
        int n = 0;
        while (n < into.Length && TryPop(out var c)) into[n++] = c;
        return n;
    }

    // ---- push ---------------------------------------------------------------------------------------

    /// <summary>
    /// Returns <paramref name="chain"/> to the driver with <paramref name="written"/> bytes written to its writable part
    /// (a used ring entry). The driver sees it after <see cref="Flush"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public void Push(VirtqChain chain, uint written)
    {
        ArgumentNullException.ThrowIfNull(chain);
        if (chain.Queue != this || !chain.InFlight || written > chain.WritableBytes) BadPush(chain, written);
        chain.InFlight = false;
        _inFlight--;
        if (_error is not null || !EnsureRing()) return; // a broken queue writes nothing more to the ring
        ring.UsedElem(_usedShadow & mask) = chain.Head | (ulong)written << 32; // published by Flush's release store
        _usedShadow++;
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn, MethodImpl(MethodImplOptions.NoInlining)]
    void BadPush(VirtqChain chain, uint written)
    {
        if (chain.Queue != this) throw new ArgumentException($"the chain (head {chain.Head}) belongs to queue {chain.Queue.Name}, not {Name}", nameof(chain));
        if (!chain.InFlight) throw new InvalidOperationException($"{Name}: head {chain.Head} is not held by the device (pushed twice, or popped before a reset?)");
        throw new ArgumentOutOfRangeException(nameof(written), $"{Name}: head {chain.Head} has {chain.WritableBytes} writable bytes; the device cannot have written {written}");
    }

    /// <summary>
    /// Publishes the used index and notifies the driver through <see cref="Call"/> if it wants an interrupt
    /// (EVENT_IDX: the new index passed used_event; otherwise NO_INTERRUPT is clear). Returns whether it notified.
    /// Nothing pushed since the last flush: returns false and counts nothing.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public bool Flush()
    {
        if (_error is not null || _usedShadow == _usedPublished || !EnsureRing()) return false;
        Volatile.Write(ref ring.UsedIdx(), _usedShadow); // release: the used elements before the index
        _usedPublished = _usedShadow;
        Interlocked.MemoryBarrier(); // the index store before the used_event / flags load (the driver does the mirror image)
        bool need;
        if (EventIdx)
        {
            var old = _signalledUsed;
            var valid = _signalledValid;
            _signalledUsed = _usedShadow;
            _signalledValid = true;
            need = !valid || VirtqConst.NeedEvent(Volatile.Read(ref ring.UsedEvent()), _usedShadow, old);
        }
        else need = (Volatile.Read(ref ring.AvailFlags()) & VirtqConst.AvailFNoInterrupt) == 0;
        CountNotification(need, Call);
        return need;
    }

    /// <summary>Pushes one chain and flushes (a convenience for one-request-at-a-time devices). Returns whether it notified.</summary>
    public bool PushAndFlush(VirtqChain chain, uint written)
    {
        Push(chain, written);
        return Flush();
    }

    // ---- kick suppression ---------------------------------------------------------------------------

    /// <summary>
    /// Asks the driver not to kick (clears nothing with EVENT_IDX — avail_event just stays behind —, sets NO_NOTIFY
    /// otherwise) while the device is busy polling the ring.
    /// </summary>
    public void DisableKicks()
    {
        _kicksEnabled = false;
        // Only the device writes the flags: when NO_NOTIFY is already set, the store would only take the line (which
        // holds the used idx the driver polls) away from the driver's core.
        if (!EventIdx && _error is null && EnsureRing() && (ring.UsedFlags() & VirtqConst.UsedFNoNotify) == 0)
            Volatile.Write(ref ring.UsedFlags(), (ushort)(ring.UsedFlags() | VirtqConst.UsedFNoNotify));
    }

    /// <summary>
    /// Asks the driver to kick on its next buffer (avail_event = last_avail_idx with EVENT_IDX, else clears NO_NOTIFY),
    /// then re-reads the available index: true when buffers arrived meanwhile (pop them before sleeping).
    /// </summary>
    public bool EnableKicks()
    {
        _kicksEnabled = true;
        if (_error is not null || !EnsureRing()) return false;
        return ArmKick() || _lastAvail != _shadowAvail;
    }

    /// <summary>
    /// Forgets all state (the driver reset the device): not broken, nothing in flight, reading from
    /// <paramref name="lastAvailIdx"/> again, the used index re-read from the ring. Error counts are kept.
    /// </summary>
    public void Reset(ushort lastAvailIdx = 0)
    {
        foreach (var c in _chains)
            if (c is not null) c.InFlight = false;
        _inFlight = 0;
        _error = null;
        _lastAvail = _shadowAvail = lastAvailIdx;
        _initialised = false;
        _signalledValid = false;
        _kicksEnabled = true;
        ring.Invalidate();
        _tlbEpoch = -1;
    }

    // ---- display ------------------------------------------------------------------------------------

    /// <inheritdoc/>
    public override IRenderable ChainsInFlight()
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"{Name}: chains held by the device")) };
        t.AddColumn("head").AddColumn("descriptors").AddColumn("readable").AddColumn("writable").AddColumn("segments");
        foreach (var c in _chains)
            if (c is { InFlight: true })
                t.AddRow(c.Head.ToString(), c.Descriptors + (c.Indirect ? " (indirect)" : ""), $"{c.ReadableBytes} B", $"{c.WritableBytes} B",
                    Markup.Escape(string.Join(" ", c.Segments.ToArray().Take(8)) + (c.Segments.Length > 8 ? " …" : "")));
        return t;
    }

    /// <inheritdoc/>
    public override IRenderable ToRenderable()
    {
        var t = NewTable("device");
        t.AddRow("device last_avail_idx", _lastAvail.ToString());
        t.AddRow("device used idx (published)", $"{_usedShadow} ({_usedPublished})");
        t.AddRow("in flight", _inFlight.ToString());
        t.AddRow("interrupts sent / suppressed", $"{NotificationsSent:N0} / {NotificationsSuppressed:N0}");
        t.AddRow("kicks", _kicksEnabled ? "enabled" : "disabled");
        var errs = Errors;
        t.AddRow("errors", errs.Count == 0 ? "none" : Markup.Escape(string.Join(", ", errs.Select(e => $"{e.Key} {e.Value}"))));
        t.AddRow("state", _error is null ? "ok" : Markup.Escape($"BROKEN (needs reset): {_error.Message}"));
        return t;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: device side, size {Size}, last_avail {_lastAvail}, used {_usedShadow}, in flight {_inFlight}{(_error is null ? "" : ", broken")}";
}
