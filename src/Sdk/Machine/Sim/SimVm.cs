// The simulator backend (Backend.Sim): the same Vm API and the same dirty-logging semantics as KVM, with no /dev/kvm.
//
// What it models
//   - Guest memory is real host memory: the same HostMapping per memslot as the KVM backend (anonymous, THP,
//     hugetlb, memfd), so Discard/Populate/ResidentBytes measure the host exactly as with KVM.
//   - Each vCPU is a host thread interpreting the Workload through WorkloadCursor (the definition the KVM backend's
//     generated guest code also follows): 8-byte volatile loads and stores at the planned gpas, passes, sync points.
//   - Dirty logging, as virt/kvm/kvm_main.c does it: a dirty_bitmap per memslot created when KVM_MEM_LOG_DIRTY_PAGES
//     is set (all ones with KVM_DIRTY_LOG_INITIALLY_SET) and freed when it is cleared; a guest write to a logging slot
//     sets its page's bit (mark_page_dirty_in_slot); reads never dirty; legacy KVM_GET_DIRTY_LOG exchanges each word
//     with 0 (returns and re-protects); with manual protect GET only copies and KVM_CLEAR_DIRTY_LOG clears the
//     masked bits (atomic fetch-andnot); the 64-page rule is checked by the Vm layer.
//   - The dirty ring: one ring of struct kvm_dirty_gfn per vCPU (flags DIRTY/RESET, slot = as_id<<16 | id, offset),
//     dirty/reset/fetch indexes; a page is pushed once until its entry is reset (the write-protection KVM re-arms in
//     KVM_RESET_DIRTY_RINGS); at the soft limit (entries − KVM_DIRTY_RING_RSVD_ENTRIES) the vCPU takes a
//     KVM_EXIT_DIRTY_RING_FULL exit, served by Vm.OnDirtyRingFull. With a ring, GET/CLEAR are refused (ENXIO).
//
// What it does not model
//   - No SPTEs, no shadow or TDP page tables, no EPT/NPT, no TLB and no TLB flushes; so no huge-page mapping,
//     splitting (eager or on write fault) or coalescing, and no MMU statistics (pages_4k, pages_2m, remote_tlb_flush …).
//     A "write-protected" page is only its clear bit: the cost of a write fault is not simulated.
//   - No x86 instructions, registers, exits other than the ring-full one, no guest code (the raw-assembly escape
//     hatch is KVM-only), no PML (so no cpu_dirty_log_size in the ring's reserved entries), no dirty-log race
//     windows between a fault and the store, no address spaces other than 0, no KVM_MEM_READONLY.
//   - Host writes through GuestMemory never dirty pages (as with KVM, where only guest writes are logged).
//   - Timings are of host threads touching host memory, not of a guest.

using System.Runtime.CompilerServices;
using System.Runtime.ExceptionServices;

namespace VirtLab.Sdk.Machine.Sim;

internal static class SimBackend
{
    public static Vm Create(VmOptions options)
    {
        var vm = new SimVm(options);
        try
        {
            vm.Initialize();
            return vm;
        }
        catch
        {
            vm.Dispose();
            throw;
        }
    }
}

internal sealed unsafe class SimVm : Vm
{
    /// <summary>Per-memslot dirty state. Arrays are swapped whole when logging toggles, so vCPUs read one reference.</summary>
    sealed class SlotState
    {
        /// <summary>dirty_bitmap (bitmap mode); null when the slot does not log.</summary>
        public volatile ulong[]? Log;
        /// <summary>Ring mode: pages pushed since their entry was last reset (i.e. not write-protected); null when not logging.</summary>
        public volatile ulong[]? RingPushed;
    }

    /// <summary>One vCPU's ring of struct kvm_dirty_gfn.</summary>
    sealed class SimRing(int entries)
    {
        public struct Entry
        {
            public uint Flags;
            public uint Slot;
            public ulong Offset;
        }

        public readonly Entry[] Entries = new Entry[entries];
        public readonly uint Mask = (uint)entries - 1;
        public uint DirtyIndex;  // next entry the vCPU fills (kvm_dirty_ring.dirty_index)
        public uint ResetIndex;  // next entry KVM_RESET_DIRTY_RINGS looks at (reset_index)
        public uint FetchIndex;  // next entry userspace harvests

        public uint Used => Volatile.Read(ref DirtyIndex) - Volatile.Read(ref ResetIndex);
    }

    readonly SimRing[]? _rings;
    readonly int _ringSoftLimit;

    public SimVm(VmOptions options) : base(options)
    {
        if (DirtyRing is { } r)
        {
            _rings = new SimRing[options.Vcpus];
            for (int i = 0; i < _rings.Length; i++) _rings[i] = new SimRing(r.Entries);
            _ringSoftLimit = r.SoftLimit;
        }
    }

    public void Initialize() => CreateDefaultSlots();

    public override Backend Backend => Backend.Sim;

    // ---- memslots and the dirty log ---------------------------------------------------------------

    static SlotState StateOf(MemSlot slot) => (SlotState)slot.BackendState!;

    private protected override void SetMemoryRegion(MemSlot slot, bool logDirtyPages)
    {
        var st = slot.BackendState as SlotState ?? new SlotState();
        var words = DirtyBitmap.WordsFor(slot.Pages);
        if (logDirtyPages && st.Log is null && st.RingPushed is null)
        {
            if (_rings is not null) st.RingPushed = new ulong[words]; // every page write-protected
            else
            {
                var log = new ulong[words];
                if (InitiallySet)
                {
                    // kvm_prepare_memory_region: bitmap_set(dirty_bitmap, 0, npages); nothing is write-protected.
                    var b = new DirtyBitmap(slot.Pages, log);
                    b.SetAll();
                }
                st.Log = log;
            }
        }
        else if (!logDirtyPages)
        {
            st.Log = null;
            st.RingPushed = null;
        }
        slot.BackendState = st;
    }

    private protected override void DeleteMemoryRegion(MemSlot slot)
    {
        var st = StateOf(slot);
        st.Log = null;
        st.RingPushed = null;
    }

    private protected override void GetDirtyLogCore(MemSlot slot, ulong[] bitmap)
    {
        var log = StateOf(slot).Log ?? throw new InvalidOperationException($"slot {slot.Id} has no dirty bitmap");
        if (ManualProtect)
        {
            for (int i = 0; i < log.Length; i++) bitmap[i] = Volatile.Read(ref log[i]);
        }
        else
        {
            // Legacy: hand out each word and re-protect what it reported, atomically against concurrent writers.
            for (int i = 0; i < log.Length; i++)
                bitmap[i] = Volatile.Read(ref log[i]) == 0 ? 0 : Interlocked.Exchange(ref log[i], 0);
        }
    }

    private protected override void ClearDirtyLogCore(MemSlot slot, long firstPage, long numPages, ReadOnlySpan<ulong> mask)
    {
        var log = StateOf(slot).Log ?? throw new InvalidOperationException($"slot {slot.Id} has no dirty bitmap");
        int w0 = (int)(firstPage >> 6);
        for (int i = 0; i < mask.Length; i++)
            if (mask[i] != 0) Interlocked.And(ref log[w0 + i], ~mask[i]);
    }

    // ---- dirty ring -------------------------------------------------------------------------------

    private protected override void HarvestDirtyRingCore(int vcpu, List<DirtyGfn> into)
    {
        if (_rings is null) return;
        var r = _rings[vcpu];
        while (true)
        {
            ref var e = ref r.Entries[r.FetchIndex & r.Mask];
            if ((Volatile.Read(ref e.Flags) & DirtyGfn.FlagDirty) == 0) break;
            into.Add(new DirtyGfn(e.Slot, e.Offset));
            Volatile.Write(ref e.Flags, DirtyGfn.FlagReset); // what userspace writes once it has collected the entry
            r.FetchIndex++;
        }
    }

    private protected override long ResetDirtyRingsCore()
    {
        if (_rings is null) return 0;
        long count = 0;
        foreach (var r in _rings)
        {
            while (r.ResetIndex != Volatile.Read(ref r.DirtyIndex))
            {
                ref var e = ref r.Entries[r.ResetIndex & r.Mask];
                if ((Volatile.Read(ref e.Flags) & DirtyGfn.FlagReset) == 0) break; // not harvested yet
                // Re-protect: the next write to this page pushes a new entry.
                if ((e.Slot >> 16) == 0 && FindSlot((int)(e.Slot & 0xffff)) is { } slot && e.Offset < (ulong)slot.Pages &&
                    StateOf(slot).RingPushed is { } pushed)
                    Interlocked.And(ref pushed[e.Offset >> 6], ~(1UL << (int)(e.Offset & 63)));
                Volatile.Write(ref e.Flags, 0);
                Volatile.Write(ref r.ResetIndex, r.ResetIndex + 1);
                count++;
            }
        }
        return count;
    }

    /// <summary>kvm_dirty_ring_push; then the soft-full check KVM makes before re-entering the guest.</summary>
    void PushDirtyGfn(int vcpu, int slotId, long page)
    {
        var r = _rings![vcpu];
        if (r.Used >= (uint)r.Entries.Length)
            throw new InvalidOperationException($"vCPU {vcpu}'s dirty ring overflowed ({r.Entries.Length} entries); the soft limit should have stopped it");
        ref var e = ref r.Entries[r.DirtyIndex & r.Mask];
        e.Slot = (uint)slotId;
        e.Offset = (ulong)page;
        Volatile.Write(ref e.Flags, DirtyGfn.FlagDirty);
        Volatile.Write(ref r.DirtyIndex, r.DirtyIndex + 1);
        if (r.Used >= (uint)_ringSoftLimit) OnDirtyRingFull(vcpu); // KVM_EXIT_DIRTY_RING_FULL, served, then resume
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    void MarkPageDirty(int vcpu, MemSlot slot, SlotState st, long page)
    {
        int w = (int)(page >> 6);
        ulong bit = 1UL << (int)(page & 63);
        if (_rings is null)
        {
            var log = st.Log;
            if (log is not null && (Volatile.Read(ref log[w]) & bit) == 0) Interlocked.Or(ref log[w], bit);
            return;
        }
        var pushed = st.RingPushed;
        if (pushed is null || (Volatile.Read(ref pushed[w]) & bit) != 0) return; // not logging, or already writable
        if ((Interlocked.Or(ref pushed[w], bit) & bit) == 0) PushDirtyGfn(vcpu, slot.Id, page);
    }

    // ---- running workloads ------------------------------------------------------------------------

    private protected override WorkloadResult RunCore(WorkloadPlan plan, Action<int>? afterPass, CancellationToken cancellation)
    {
        int vcpus = plan.Vcpus, passes = plan.Workload.Passes;
        bool sync = plan.Workload.SyncEachPass;
        var recorder = new WorkloadRecorder(plan);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(cancellation);
        var token = cts.Token;
        var go = Enumerable.Range(0, vcpus).Select(_ => new SemaphoreSlim(0)).ToArray();
        using var done = new CountdownEvent(vcpus);
        ExceptionDispatchInfo? failure = null;
        long ringExitsBefore = DirtyRing?.FullExits ?? 0;

        var threads = new Thread[vcpus];
        for (int v = 0; v < vcpus; v++)
        {
            int vcpu = v;
            threads[v] = new Thread(() =>
            {
                try
                {
                    var cursor = plan.Cursor(vcpu);
                    for (int p = 0; p < passes; p++)
                    {
                        if (sync || p == 0) go[vcpu].Wait(token);
                        var t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                        RunPass(ref cursor, plan, vcpu, token, out var reads, out var writes);
                        recorder.VcpuPass(vcpu, p, System.Diagnostics.Stopwatch.GetElapsedTime(t0), reads, writes);
                        if (sync || p == passes - 1) done.Signal();
                    }
                }
                catch (OperationCanceledException) when (token.IsCancellationRequested) { }
                catch (Exception e)
                {
                    Interlocked.CompareExchange(ref failure, ExceptionDispatchInfo.Capture(e), null);
                    cts.Cancel();
                }
            }) { IsBackground = true, Name = $"sim vCPU {v}" };
            threads[v].Start();
        }

        var start = System.Diagnostics.Stopwatch.GetTimestamp();
        try
        {
            for (int p = 0; p < passes; p++)
            {
                if (!sync && p > 0) break;
                var t0 = System.Diagnostics.Stopwatch.GetTimestamp();
                if (p > 0) done.Reset(vcpus);
                token.ThrowIfCancellationRequested(); // e.g. disposed from afterPass: never release vCPUs into unmapped memory
                foreach (var g in go) g.Release();
                done.Wait(token);
                if (!sync) break;
                recorder.Pass(p, System.Diagnostics.Stopwatch.GetElapsedTime(t0));
                afterPass?.Invoke(p);
            }
        }
        catch (OperationCanceledException) when (failure is not null)
        {
            // a vCPU failed; its exception is rethrown below
        }
        catch
        {
            cts.Cancel();
            throw;
        }
        finally
        {
            if (failure is not null || token.IsCancellationRequested) cts.Cancel();
            foreach (var t in threads) t.Join();
            foreach (var g in go) g.Dispose();
        }
        failure?.Throw();
        cancellation.ThrowIfCancellationRequested();
        var elapsed = System.Diagnostics.Stopwatch.GetElapsedTime(start);
        return recorder.Build(Backend.Sim, elapsed, (DirtyRing?.FullExits ?? 0) - ringExitsBefore);
    }

    void RunPass(ref WorkloadCursor cursor, WorkloadPlan plan, int vcpu, CancellationToken token, out long reads, out long writes)
    {
        reads = writes = 0;
        ulong value = plan.Workload.WriteValue, sink = 0;
        MemSlot? slot = null;
        SlotState? st = null;
        ulong start = 0, size = 0;
        nint host = 0;
        long n = 0;
        cursor.BeginPass();
        while (cursor.Next(out var gpa, out var write))
        {
            if (slot is null || gpa - start >= size)
            {
                slot = FindSlotAt(gpa) ?? throw new InvalidOperationException($"vCPU {vcpu}: gpa 0x{gpa:x} is no longer guest memory");
                st = StateOf(slot);
                start = slot.Gpa;
                size = (ulong)slot.Size.Bytes;
                host = slot.HostAddress;
            }
            var p = (ulong*)(host + (nint)(gpa - start));
            if (write)
            {
                // Store first, then mark: a concurrent GET that misses the bit still sees it set afterwards.
                Volatile.Write(ref *p, value);
                MarkPageDirty(vcpu, slot, st!, (long)((gpa - start) >> 12));
                writes++;
            }
            else
            {
                sink += Volatile.Read(ref *p);
                reads++;
            }
            if ((++n & 1023) == 0) token.ThrowIfCancellationRequested();
        }
        GC.KeepAlive(sink);
    }

    private protected override void DisposeCore() { }
}
