namespace VirtLab.Sdk.Machine;

/// <summary>
/// One harvested <c>struct kvm_dirty_gfn</c>: <see cref="Slot"/> is <c>as_id &lt;&lt; 16 | slot id</c>, <see cref="Offset"/> the
/// page index inside that memslot.
/// </summary>
public readonly record struct DirtyGfn(uint Slot, ulong Offset)
{
    /// <summary>kvm_dirty_gfn.flags: KVM_DIRTY_GFN_F_DIRTY (harvestable) and KVM_DIRTY_GFN_F_RESET (harvested, awaiting reset).</summary>
    public const uint FlagDirty = 1, FlagReset = 2; // KVM_DIRTY_GFN_F_DIRTY / _RESET

    /// <summary>The memslot id (low 16 bits of kvm_dirty_gfn.slot).</summary>
    public int SlotId => (int)(Slot & 0xffff);
    /// <summary>The address space id (high 16 bits of kvm_dirty_gfn.slot).</summary>
    public int AddressSpace => (int)(Slot >> 16);
    /// <inheritdoc/>
    public override string ToString() => $"slot {SlotId} page {Offset}";
}

/// <summary>
/// The VM's per-vCPU dirty rings (<c>KVM_CAP_DIRTY_LOG_RING</c>), enabled before the vCPUs are created
/// (<see cref="VmOptions.DirtyRingBytes"/>). A vCPU pushes one entry the first time it writes a page of a logging slot
/// after the page was last protected; when its ring reaches the soft limit it exits with
/// <c>KVM_EXIT_DIRTY_RING_FULL</c>. During <see cref="Vm.Run"/> such an exit is served at once: every ring is harvested
/// into a backlog, the rings are reset and the vCPU resumes — so <see cref="Harvest"/> still returns every entry.
/// </summary>
public sealed class DirtyRing
{
    readonly Vm _vm;
    readonly object _gate = new();
    readonly List<DirtyGfn> _backlog = [];
    long _fullExits;

    internal DirtyRing(Vm vm, int bytes)
    {
        this._vm = vm;
        Bytes = bytes;
    }

    /// <summary>Ring size in bytes per vCPU.</summary>
    public int Bytes { get; }

    /// <summary>Entries per vCPU ring.</summary>
    public int Entries => Bytes / VmOptions.DirtyRingEntryBytes;

    /// <summary>Used entries at which a vCPU exits with <c>KVM_EXIT_DIRTY_RING_FULL</c> (size − KVM_DIRTY_RING_RSVD_ENTRIES).</summary>
    public int SoftLimit => Entries - VmOptions.DirtyRingReservedEntries;

    /// <summary><c>KVM_EXIT_DIRTY_RING_FULL</c> exits served so far.</summary>
    public long FullExits => Interlocked.Read(ref _fullExits);

    /// <summary>
    /// Collects the dirty entries of every vCPU ring (vCPU 0 first, each in ring order), after any backlog from ring-full
    /// exits, and marks them harvested (<c>KVM_DIRTY_GFN_F_RESET</c>). Their pages stay writable — and are not reported
    /// again — until <see cref="Reset"/>.
    /// </summary>
    public IReadOnlyList<DirtyGfn> Harvest()
    {
        // The rings are mappings of the vCPU fds: announce the VM so Dispose waits before unmapping them (see SlotGuard).
        using var use = SlotGuard.Enter(_vm.Serial);
        _vm.ThrowIfDisposed();
        lock (_gate)
        {
            var list = new List<DirtyGfn>(_backlog);
            _backlog.Clear();
            for (int v = 0; v < _vm.Vcpus; v++) _vm.HarvestDirtyRingInternal(v, list);
            return list;
        }
    }

    /// <summary>Harvest, folded into one bitmap per slot.</summary>
    public IReadOnlyDictionary<int, DirtyBitmap> HarvestBitmaps()
    {
        var result = new Dictionary<int, DirtyBitmap>();
        foreach (var e in Harvest())
        {
            if (!result.TryGetValue(e.SlotId, out var b))
            {
                var slot = _vm.FindSlot(e.SlotId);
                if (slot is null) continue; // the slot went away after the entry was pushed
                result[e.SlotId] = b = new DirtyBitmap(slot.Pages);
            }
            if (e.Offset < (ulong)b.Pages) b.Set((long)e.Offset);
        }
        return result;
    }

    /// <summary><c>KVM_RESET_DIRTY_RINGS</c>: re-protects the pages of harvested entries and frees their ring slots; returns how many.</summary>
    public long Reset()
    {
        using var use = SlotGuard.Enter(_vm.Serial); // see Harvest: the VM fd stays open until the ioctl returns
        _vm.ThrowIfDisposed();
        lock (_gate) return _vm.ResetDirtyRingsInternal();
    }

    /// <summary>Serves a vCPU's ring-full exit: harvest everything into the backlog, reset. Thread-safe.</summary>
    internal void OnFull()
    {
        lock (_gate)
        {
            Interlocked.Increment(ref _fullExits);
            for (int v = 0; v < _vm.Vcpus; v++) _vm.HarvestDirtyRingInternal(v, _backlog);
            _vm.ResetDirtyRingsInternal();
        }
    }

    /// <inheritdoc/>
    public override string ToString() => $"dirty ring: {Entries} entries × {_vm.Vcpus} vCPUs, soft limit {SoftLimit}, {FullExits} full exits";
}
