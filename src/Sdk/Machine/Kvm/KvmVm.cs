using System.Diagnostics;
using Iced.Intel;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// The real KVM backend: the Machine layer's slots become KVM memslots, workloads are compiled to x86-64 and
/// run by one thread per vCPU in KVM_RUN, dirty logging is the kernel's own.
/// </summary>
internal sealed class KvmVm : Vm
{
    internal KvmMachine Machine { get; }

    private KvmVm(VmOptions options, KvmMachine machine) : base(options) => Machine = machine;

    public override Backend Backend => Backend.Kvm;
    public override int MaxVcpus => Machine.System.MaxVcpus;
    public override int MaxMemslots => Machine.System.NrMemslots > 0 ? Machine.System.NrMemslots : base.MaxMemslots;

    /// <summary>
    /// The host's limits, checked once, here (VmOptions.Validate has checked what does not depend on the host; below
    /// this, KvmMachine only asserts them). Static over a probe result, so it is tested with a synthesized host.
    /// </summary>
    internal static void CheckHostLimits(VmOptions o, KvmSystem sys)
    {
        Debug.Assert(sys.Usable, "VmBackends checks KvmBackend.IsUsable before building");
        if (o.Vcpus > sys.MaxVcpus)
            throw new ArgumentOutOfRangeException(nameof(o.Vcpus), $"this host's KVM allows at most {sys.MaxVcpus} vCPUs per VM (KVM_CAP_MAX_VCPUS); got {o.Vcpus}");
        // (The system slot has a record for each of VmOptions' 1024 vCPUs: nothing to check again; a test pins it.)
        if (o.DirtyRingBytes.Bytes > 0 && sys.DirtyRingMaxBytes == 0)
            throw new BackendUnavailableException(Backend.Kvm, "this host's KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING is 0); leave DirtyRingBytes at 0 or use Backend.Sim");
        if (o.DirtyRingBytes.Bytes > 0 && o.DirtyRingBytes.Bytes > sys.DirtyRingMaxBytes)
            throw new ArgumentOutOfRangeException(nameof(o.DirtyRingBytes),
                $"this host's KVM allows dirty rings of at most {sys.DirtyRingMaxBytes} bytes (KVM_CAP_DIRTY_LOG_RING); got {o.DirtyRingBytes.Bytes}");
        if (o.ManualProtect)
        {
            ulong flags = KvmConst.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (o.InitiallySet ? KvmConst.KVM_DIRTY_LOG_INITIALLY_SET : 0);
            int supported = sys.Cap(KvmCap.MANUAL_DIRTY_LOG_PROTECT2);
            if (((ulong)supported & flags) != flags)
                throw new BackendUnavailableException(Backend.Kvm, $"this host's KVM does not support manual dirty-log protection with flags 0x{flags:x} (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 reports 0x{supported:x}); use Backend.Sim or leave ManualProtect/InitiallySet off");
        }
        if (o.SystemMemory is { } sm && (ulong)sm.Bytes < SystemLayout.MinSize(o.Vcpus))
            throw new ArgumentException($"system memory {sm} is too small for the KVM backend with {o.Vcpus} vCPUs: it needs at least {SystemLayout.MinSize(o.Vcpus) >> 10} KiB", nameof(o.SystemMemory));
    }

    public static KvmVm Build(VmOptions o)
    {
        CheckHostLimits(o, KvmSystem.Probe());
        var m = new KvmMachine(o.Vcpus);
        KvmVm? vm = null;
        try
        {
            // The guest's MAXPHYADDR is what KVM_GET_SUPPORTED_CPUID reports (0x80000008); a slot above it is
            // unreachable for the guest, and its first access would triple-fault.
            if (o.GuestPhysBits is { } bits && bits > m.GuestPhysBits)
                throw new ArgumentOutOfRangeException(nameof(o.GuestPhysBits),
                    $"guest physical address bits {bits} is more than this host's KVM offers its guests ({m.GuestPhysBits}, CPUID 0x80000008 from KVM_GET_SUPPORTED_CPUID); use at most {m.GuestPhysBits}, or leave GuestPhysBits unset");
            if (o.DirtyRingBytes.Bytes > 0) m.EnableDirtyRing((int)o.DirtyRingBytes.Bytes);
            if (o.ManualProtect) m.EnableManualProtect(o.InitiallySet);
            if (o.Backing == Backing.AnonymousHugetlb1G && KvmCpuid.Has1GPages(m.Cpuid)) m.Use1GPages = true;
            vm = new KvmVm(o, m);
            var self = vm;
            m.OnDirtyRingFull = i => self.OnDirtyRingFull(i);
            m.GuestFailureHint = () => self.SystemSlotWritten
                ? "the host wrote into system slot 0 (vm.Memory.WithSystemSlotWrites()), which holds this backend's GDT, page tables, code and stacks: that is the likely cause"
                : null;
            vm.CreateDefaultSlots(o.GuestPhysBits ?? m.GuestPhysBits);
            m.CreateVcpus();
            return vm;
        }
        catch
        {
            if (vm != null) vm.Dispose();
            else m.Dispose();
            throw;
        }
    }

    // ---- memslots and dirty logging ----------------------------------------------------------------

    private protected override void SetMemoryRegion(MemSlot slot, bool logDirtyPages) =>
        Machine.SetUserMemoryRegion((uint)slot.Id, logDirtyPages ? KvmConst.KVM_MEM_LOG_DIRTY_PAGES : 0, slot.Gpa, (ulong)slot.Size.Bytes, slot.HostAddress);

    private protected override void DeleteMemoryRegion(MemSlot slot) => Machine.DeleteUserMemoryRegion((uint)slot.Id);

    private protected override void GetDirtyLogCore(MemSlot slot, ulong[] bitmap)
    {
        // Safe because the Vm layer sizes the bitmap for the whole slot (the kernel writes npages bits) and it is pinned for the call.
        unsafe { fixed (ulong* p = bitmap) Machine.GetDirtyLog((uint)slot.Id, p); }
    }

    private protected override void ClearDirtyLogCore(MemSlot slot, long firstPage, long numPages, ReadOnlySpan<ulong> mask)
    {
        if (numPages > uint.MaxValue) throw new ArgumentOutOfRangeException(nameof(numPages), "KVM_CLEAR_DIRTY_LOG takes at most 2^32-1 pages per call");
        // Safe because the Vm layer checks the mask covers numPages bits and it is pinned for the call.
        unsafe { fixed (ulong* p = mask) Machine.ClearDirtyLog((uint)slot.Id, (ulong)firstPage, (uint)numPages, p); }
    }

    private protected override void HarvestDirtyRingCore(int vcpu, List<DirtyGfn> into) => Machine.HarvestDirtyRing(vcpu, into);

    private protected override long ResetDirtyRingsCore() => Machine.ResetDirtyRings();

    // ---- workloads -----------------------------------------------------------------------------------

    private protected override WorkloadResult RunCore(WorkloadPlan plan, Action<int>? afterPass, CancellationToken cancellation)
    {
        var w = plan.Workload;
        Machine.PrepareLayout();
        KvmWorkloadCompiler.WriteRecords(plan, Machine);
        var code = KvmWorkloadCompiler.Compile(plan, yieldForDirtyRing: Machine.DirtyRingBytes > 0);
        var recorder = new WorkloadRecorder(plan);
        var sync = new PassSync(plan.Vcpus);
        var passStart = new long[plan.Vcpus];
        long t0 = Stopwatch.GetTimestamp();
        Array.Fill(passStart, t0);
        long ringFullBefore = Machine.DirtyRingFullExits;

        // Reads/writes per pass: from the guest's counters when it draws random decisions, else strides × per-stride ops.
        (long Writes, long Reads) Counters(int v, int passesCovered)
        {
            var slice = plan.Slices[v];
            if (KvmWorkloadCompiler.StaticCountsPerStride(plan, slice.Role) is { } per)
                return (per.Writes * slice.Strides * passesCovered, per.Reads * slice.Strides * passesCovered);
            var (gw, gr) = KvmWorkloadCompiler.ReadCounters(Machine, v);
            return ((long)gw, (long)gr);
        }

        // One vCPU and nothing to call between passes: nobody to meet at the sync point, so the vCPU records its pass
        // and goes on, on this thread (KvmMachine.Run's onCallerThread). Several vCPUs still meet at every pass.
        bool alone = plan.Vcpus == 1 && afterPass is null;
        var callbacks = new GuestCallbacks
        {
            OnSync = (v, pass, token) =>
            {
                long now = Stopwatch.GetTimestamp();
                var (writes, reads) = Counters(v, 1);
                var elapsed = Stopwatch.GetElapsedTime(passStart[v], now);
                recorder.VcpuPass(v, (int)pass, elapsed, reads, writes);
                if (alone)
                {
                    recorder.Pass((int)pass, elapsed);
                    passStart[v] = Stopwatch.GetTimestamp();
                    return;
                }
                sync.Arrive((int)pass, token);
                passStart[v] = sync.ReleasedAt((int)pass);
            },
            OnDone = v =>
            {
                if (w.SyncEachPass) return;
                // Passes ran back to back: totals, attributed to the last pass.
                var (writes, reads) = Counters(v, w.Passes);
                recorder.VcpuPass(v, w.Passes - 1, Stopwatch.GetElapsedTime(t0), reads, writes);
            },
        };

        Action<CancellationToken>? host = null;
        if (w.SyncEachPass && !alone)
        {
            host = token =>
            {
                long released = t0;
                for (int p = 0; p < w.Passes; p++)
                {
                    sync.WaitAll(p, token);
                    recorder.Pass(p, Stopwatch.GetElapsedTime(released));
                    afterPass?.Invoke(p);
                    released = Stopwatch.GetTimestamp();
                    sync.Release(p, released);
                }
            };
        }
        Machine.Run(code, 0, callbacks, cancellation, host, onCallerThread: alone);
        // Without SyncEachPass there is no sync point and afterPass is not called (as documented on Vm.Run and as the Sim does).
        return recorder.Build(Backend.Kvm, Stopwatch.GetElapsedTime(t0), Machine.DirtyRingFullExits - ringFullBefore);
    }

    /// <summary>
    /// Raw-assembly escape hatch: <paramref name="assemble"/> produces the program (after the page tables match the
    /// current slots, so <see cref="KvmVmExtensions.GuestVirtualAddress"/> is valid inside it), which then runs on every
    /// vCPU — as the VM's one run, like <see cref="Vm.Run"/>: slots cannot be removed or resized meanwhile and Dispose
    /// waits for it or stops it.
    /// </summary>
    internal void RunAssembly(Func<byte[]> assemble, Action<int, ulong>? onSync, Action<int, string>? onPrint, CancellationToken cancellation)
    {
        var cb = new GuestCallbacks
        {
            OnSync = onSync is null ? null : (v, pass, _) => onSync(v, pass),
            OnPrint = onPrint,
        };
        Exclusive(cancellation, token =>
        {
            Machine.PrepareLayout();
            var code = assemble();
            if (code.Length == 0) throw new ArgumentException("the guest program is empty", nameof(assemble));
            Machine.Run(code, 0, cb, token);
            return 0;
        });
    }

    private protected override bool IsGuestThread => Machine.IsVcpuThread;

    private protected override void DisposeCore() => Machine.Dispose();
}

/// <summary>All vCPUs meet at the sync point of pass p; the host thread waits for them, runs its after-pass work, releases.</summary>
internal sealed class PassSync(int vcpus)
{
    private readonly object _gate = new();
    private long _arrived;
    private int _released = -1;
    private readonly Dictionary<int, long> _releasedAt = new();

    public void Arrive(int pass, CancellationToken token)
    {
        lock (_gate)
        {
            _arrived++;
            Monitor.PulseAll(_gate);
            while (_released < pass)
            {
                token.ThrowIfCancellationRequested();
                Monitor.Wait(_gate, 20);
            }
        }
    }

    public void WaitAll(int pass, CancellationToken token)
    {
        lock (_gate)
        {
            while (_arrived < (long)vcpus * (pass + 1))
            {
                token.ThrowIfCancellationRequested();
                Monitor.Wait(_gate, 20);
            }
        }
    }

    public void Release(int pass, long timestamp)
    {
        lock (_gate)
        {
            _released = pass;
            _releasedAt[pass] = timestamp;
            Monitor.PulseAll(_gate);
        }
    }

    public long ReleasedAt(int pass)
    {
        lock (_gate) return _releasedAt[pass];
    }
}

/// <summary>KVM-only operations on a <see cref="Vm"/>: binary stats and the raw-assembly escape hatch.</summary>
public static class KvmVmExtensions
{
    private static KvmVm Kvm(Vm vm, string what) =>
        vm as KvmVm ?? throw new NotSupportedException($"{what} needs the KVM backend; this VM runs on {vm.Backend}");

    /// <summary>True when the VM runs on real KVM.</summary>
    public static bool IsKvm(this Vm vm) => vm is KvmVm;

    /// <summary>The VM's binary stats (KVM_GET_STATS_FD on the VM fd): pages_4k, pages_2m, remote_tlb_flush, …</summary>
    public static KvmStats KvmVmStats(this Vm vm)
    {
        vm.ThrowIfDisposed();
        return Kvm(vm, "VM statistics").Machine.VmStats;
    }

    /// <summary>Run <paramref name="body"/> and return what changed in the VM's binary stats meanwhile.</summary>
    public static KvmStatsDelta KvmVmStatsDelta(this Vm vm, Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        var stats = vm.KvmVmStats();
        var before = stats.Snapshot();
        body();
        return stats.Snapshot().Since(before);
    }

    /// <summary>A vCPU's binary stats (KVM_GET_STATS_FD on the vCPU fd): exits, io_exits, pf_fixed, …</summary>
    public static KvmStats KvmVcpuStats(this Vm vm, int vcpu)
    {
        vm.ThrowIfDisposed();
        return Kvm(vm, "vCPU statistics").Machine.VcpuStats(vcpu);
    }

    /// <summary>
    /// Run hand-written x86-64 on every vCPU (KVM only). The program starts in 64-bit mode at the code area of slot 0
    /// with rdi = vCPU index and a 16 KiB stack (a ucall done is appended); it talks to the host through the guest ABI,
    /// <see cref="Kvm.Ucall"/> (emitted with <see cref="UcallAssembler"/>: <c>a.UcallSync()</c>, <c>a.UcallPrint("…")</c>, …).
    /// <see cref="GuestVirtualAddress"/> gives the gva of a guest-physical address for loads and stores. A print without
    /// <paramref name="onPrint"/> is reported through <see cref="RunLog"/> (in the shell: standard output).
    /// </summary>
    public static void RunAssembly(this Vm vm, Action<Assembler> program, Action<int, ulong>? onSync = null,
        Action<int, string>? onPrint = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(program);
        Kvm(vm, "a raw-assembly program").RunAssembly(() =>
        {
            var a = new Assembler(64);
            program(a);
            a.UcallDone(); // falling off the end of the user's program ends it cleanly
            a.hlt();
            using var ms = new MemoryStream();
            a.Assemble(new StreamCodeWriter(ms), SystemLayout.CodeGpa);
            return ms.ToArray();
        }, onSync, onPrint, cancellation);
    }

    /// <summary>Guest address where raw programs are loaded and entered (in system slot 0, identity-mapped).</summary>
    public const ulong CodeAddress = SystemLayout.CodeGpa;

    /// <summary>Run pre-assembled x86-64 (linked at <see cref="CodeAddress"/>, entered at its first byte) on every vCPU.</summary>
    public static void RunAssembly(this Vm vm, byte[] code, Action<int, ulong>? onSync = null,
        Action<int, string>? onPrint = null, CancellationToken cancellation = default)
    {
        ArgumentNullException.ThrowIfNull(code);
        if (code.Length == 0) throw new ArgumentException("the guest program is empty", nameof(code));
        Kvm(vm, "a raw-assembly program").RunAssembly(() => code, onSync, onPrint, cancellation);
    }

    /// <summary>Guest-virtual address at which guest code sees <paramref name="gpa"/> (user memory may be mapped below its gpa).</summary>
    public static ulong GuestVirtualAddress(this Vm vm, ulong gpa)
    {
        vm.ThrowIfDisposed();
        var k = Kvm(vm, "guest virtual addresses");
        k.Machine.PrepareLayout();
        return k.Machine.GvaOf(gpa);
    }
}
