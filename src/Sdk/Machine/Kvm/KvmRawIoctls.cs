using System.Diagnostics;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm.Benchmarks;

/// <summary>
/// What <see cref="KvmRawIoctls.Populate"/> measured, in seconds. Timed (<see cref="TimedSeconds"/>), what
/// <see cref="Vm.Run"/> of a fresh VM also does in the kernel: <see cref="RegsSeconds"/> (KVM_GET_SREGS, KVM_SET_SREGS
/// into long mode, KVM_SET_REGS) and <see cref="RunSeconds"/> (KVM_RUN until the guest says done, <see cref="Exits"/>
/// exits, on the calling thread). Beside it, for the breakdown: <see cref="PrepareSeconds"/>, the plan, page tables,
/// per-vCPU records and guest code (the SDK's own calls, which Vm.Run also makes); <see cref="VcpuCreateSeconds"/>, one
/// more KVM_CREATE_VCPU + mmap of kvm_run + KVM_SET_CPUID2 (what <see cref="Vm.Create(VmOptions)"/> does per vCPU,
/// outside Vm.Run). <see cref="CpuSeconds"/>: the calling thread's CPU time over the timed part (<see cref="Measure.ThreadCpu"/>).
/// </summary>
public sealed record RawPopulateTimes(double PrepareSeconds, double VcpuCreateSeconds, double RegsSeconds, double RunSeconds, long Exits, double CpuSeconds)
{
    /// <summary>Registers + KVM_RUN: what a C program with its VM, vCPU and guest memory prepared would time.</summary>
    public double TimedSeconds => RegsSeconds + RunSeconds;
}

/// <summary>
/// Bare KVM ioctls in tight loops on a VM's fds, bypassing the Machine layer: the baseline against which the
/// harness (<see cref="MemSlot.GetDirtyLog(DirtyBitmap)"/>, ClearDirtyLog) is measured by scripts/bench-dirty-log.csx.
/// The loops call the same typed VM-fd methods as the backend (<see cref="KvmVmFd"/>), so the difference measured
/// is the harness around them. Buffers are pinned and reused across calls, like a C program's static arrays. Each method returns the loop's
/// elapsed time in seconds at Stopwatch resolution (a TimeSpan would round single calls to 100 ns).
/// </summary>
public static class KvmRawIoctls
{
    [ThreadStatic] private static ulong[]? _getBuffer, _clearMask;

    private static KvmMachine Machine(Vm vm)
    {
        vm.ThrowIfDisposed();
        return (vm as KvmVm ?? throw new NotSupportedException($"raw KVM ioctls need the KVM backend; this VM runs on {vm.Backend}")).Machine;
    }

    private static ulong[] Pinned(ref ulong[]? cache, long pages, bool ones)
    {
        int words = DirtyBitmap.WordsFor(pages);
        if (cache == null || cache.Length != words)
        {
            cache = GC.AllocateArray<ulong>(words, pinned: true);
            if (ones) Array.Fill(cache, ulong.MaxValue);
        }
        return cache;
    }

    /// <summary>The VM fd (for inspection; owned by the VM).</summary>
    public static int VmFd(Vm vm) => Machine(vm).VmFd;

    /// <summary><paramref name="iterations"/> × KVM_GET_DIRTY_LOG on <paramref name="slot"/> into one pinned buffer; elapsed seconds.</summary>
    public static double GetDirtyLog(Vm vm, MemSlot slot, int iterations)
    {
        var fd = Fd(vm, slot);
        // Safe because the buffer is pinned for the loop and holds the slot's whole bitmap (sized by Pinned).
        unsafe { fixed (ulong* p = Pinned(ref _getBuffer, slot.Pages, ones: false)) return GetLoop(fd, slot, p, iterations); }
    }

    /// <summary>
    /// <paramref name="iterations"/> × KVM_GET_DIRTY_LOG into <paramref name="into"/>'s own words: the same destination
    /// as the harness call, because copy_to_user's cost depends on where the buffer sits (alignment, cache).
    /// </summary>
    public static double GetDirtyLog(Vm vm, MemSlot slot, DirtyBitmap into, int iterations)
    {
        var fd = Fd(vm, slot);
        CheckWholeSlot(slot, into, "bitmap");
        // Safe because the bitmap's words are pinned for the loop and cover the whole slot (checked above).
        unsafe { fixed (ulong* p = into.Words) return GetLoop(fd, slot, p, iterations); }
    }

    /// <summary><paramref name="iterations"/> × KVM_CLEAR_DIRTY_LOG of the whole slot with <paramref name="mask"/>'s words.</summary>
    public static double ClearDirtyLog(Vm vm, MemSlot slot, DirtyBitmap mask, int iterations)
    {
        var fd = Fd(vm, slot);
        CheckWholeSlot(slot, mask, "mask");
        // Safe because the mask's words are pinned for the loop and cover the whole slot (checked above).
        unsafe { fixed (ulong* p = mask.Words) return ClearLoop(fd, slot, p, iterations); }
    }

    /// <summary><paramref name="iterations"/> × KVM_CLEAR_DIRTY_LOG of the whole slot with an all-ones mask; elapsed seconds.</summary>
    public static double ClearDirtyLog(Vm vm, MemSlot slot, int iterations)
    {
        var fd = Fd(vm, slot);
        // Safe because the buffer is pinned for the loop and holds the slot's whole bitmap (sized by Pinned).
        unsafe { fixed (ulong* p = Pinned(ref _clearMask, slot.Pages, ones: true)) return ClearLoop(fd, slot, p, iterations); }
    }

    /// <summary>
    /// Runs <paramref name="workload"/> once with bare vCPU ioctls on the calling thread, as a C program would: the
    /// baseline for <see cref="Vm.Run"/> of the same workload on a fresh VM (scripts/bench-dirty-log.csx). The guest code,
    /// records and page tables are the SDK's own (the bytes Vm.Run would run), prepared before the clock starts; then
    /// KVM_GET/SET_SREGS, KVM_SET_REGS and KVM_RUN on vCPU 0's fd until the guest's done ucall (sync and yield ucalls are
    /// resumed at once). Also times the creation of one extra vCPU (see <see cref="RawPopulateTimes.VcpuCreateSeconds"/>).
    /// Needs a KVM VM with one vCPU that has never run guest code and no dirty ring (ring-full exits are not served).
    /// </summary>
    public static RawPopulateTimes Populate(Vm vm, Workload workload)
    {
        var m = Machine(vm);
        if (vm.Vcpus != 1) throw new NotSupportedException($"the raw populate runs one vCPU on the calling thread; this VM has {vm.Vcpus}");
        if (m.DirtyRingBytes != 0) throw new NotSupportedException("the raw populate does not serve dirty-ring-full exits; use a VM without a dirty ring");
        if (m.HasRun || vm.IsRunning) throw new InvalidOperationException("the raw populate needs a fresh VM: guest code has already run on this one");
        m.HasRun = true;
        var v = m.Vcpus[0];

        long t0 = Stopwatch.GetTimestamp();
        var plan = vm.Plan(workload);
        m.PrepareLayout();
        KvmWorkloadCompiler.WriteRecords(plan, m);
        m.LoadCode(KvmWorkloadCompiler.Compile(plan, yieldForDirtyRing: false));
        ulong cr3 = m.Cr3;
        double cpu0 = Measure.ThreadCpu.Seconds;
        long t1 = Stopwatch.GetTimestamp();

        int vcpu = v.Fd.Fd;
        // Safe because the register structs are locals the kernel reads or writes for the duration of each call, and
        // kvm_run stays mapped while the VM lives (RunArea throws once it is unmapped).
        unsafe
        {
            kvm_sregs s;
            Check(Libc.ioctl(vcpu, KvmIoctl.KVM_GET_SREGS, &s), "KVM_GET_SREGS");
            KvmPageTables.SetLongMode(ref s, cr3);
            Check(Libc.ioctl(vcpu, KvmIoctl.KVM_SET_SREGS, &s), "KVM_SET_SREGS");
            var regs = new kvm_regs { rip = SystemLayout.CodeGpa, rsp = SystemLayout.StackTop(0), rdi = 0, rflags = 0x2 };
            Check(Libc.ioctl(vcpu, KvmIoctl.KVM_SET_REGS, &regs), "KVM_SET_REGS");
            long t2 = Stopwatch.GetTimestamp();
            var k = v.RunArea;
            long exits = 0;
            while (true)
            {
                if (Libc.ioctl(vcpu, KvmIoctl.KVM_RUN, 0ul) < 0)
                {
                    if (Libc.Errno is Errno.EINTR or Errno.EAGAIN) continue;
                    throw KvmException.Last("KVM_RUN", "raw populate");
                }
                exits++;
                uint reason = k->exit_reason;
                if (reason == (uint)KvmExitReason.KVM_EXIT_HLT) break;
                if (reason != (uint)KvmExitReason.KVM_EXIT_IO || k->io.port != Ucall.Port)
                    throw new InvalidOperationException($"raw populate: unexpected exit reason {reason} (expected ucalls on port 0x{Ucall.Port:x})");
                uint call = *(uint*)((byte*)k + k->io.data_offset);
                if (call == Ucall.Done) break;
                if (call is not (Ucall.Sync or Ucall.Yield)) throw new InvalidOperationException($"raw populate: ucall {call} ({Ucall.Summary})");
            }
            long t3 = Stopwatch.GetTimestamp();
            double cpu = Measure.ThreadCpu.Seconds - cpu0;

            // One more vCPU, as Vm.Create makes each: KVM_CREATE_VCPU, mmap of kvm_run, KVM_SET_CPUID2 (it never runs;
            // KVM keeps it until the VM goes).
            long t4 = Stopwatch.GetTimestamp();
            using (var fd = m.VmFdHandle.CreateVcpu(1))
            using (new KvmMapping(fd, (nuint)m.System.VcpuMmapSize, Libc.PROT_READ | Libc.PROT_WRITE, 0, "kvm_run of the raw vCPU"))
                fixed (byte* cpuid = m.Cpuid) Check(Libc.ioctl(fd.Fd, KvmIoctl.KVM_SET_CPUID2, cpuid), "KVM_SET_CPUID2");
            long t5 = Stopwatch.GetTimestamp();
            double S(long a, long b) => (b - a) / (double)Stopwatch.Frequency;
            return new RawPopulateTimes(S(t0, t1), S(t4, t5), S(t1, t2), S(t2, t3), exits, cpu);
        }
    }

    private static void Check(int result, string ioctl)
    {
        if (result < 0) throw KvmException.Last(ioctl, "raw populate");
    }

    /// <summary>The VM fd, once <paramref name="slot"/> is known to be one of this VM's current slots (the kernel writes
    /// npages bits of whatever slot has that id, so a stale slot object must not size the buffer).</summary>
    private static KvmVmFd Fd(Vm vm, MemSlot slot)
    {
        var m = Machine(vm);
        ArgumentNullException.ThrowIfNull(slot);
        if (slot.Vm != vm || vm.FindSlot(slot.Id) != slot) throw new ArgumentException($"{slot} is not a current memslot of this VM", nameof(slot));
        return m.VmFdHandle;
    }

    private static void CheckWholeSlot(MemSlot slot, DirtyBitmap bitmap, string what)
    {
        ArgumentNullException.ThrowIfNull(bitmap);
        if (bitmap.Pages != slot.Pages) throw new ArgumentException($"the {what} has {bitmap.Pages} pages but slot {slot.Id} has {slot.Pages}", what == "bitmap" ? "into" : "mask");
    }

    // Unsafe: the bitmap is a raw pointer, pinned by the caller for the whole loop (as a C program's static array).
    private static unsafe double GetLoop(KvmVmFd fd, MemSlot slot, ulong* bitmap, int iterations)
    {
        uint id = (uint)slot.Id;
        long t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < iterations; i++) fd.GetDirtyLog(id, bitmap);
        return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
    }

    private static unsafe double ClearLoop(KvmVmFd fd, MemSlot slot, ulong* mask, int iterations)
    {
        uint id = (uint)slot.Id, pages = checked((uint)slot.Pages);
        long t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < iterations; i++) fd.ClearDirtyLog(id, 0, pages, mask);
        return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
    }
}
