using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// One vCPU fd (rust-vmm's <c>VcpuFd</c>): one typed method per vCPU ioctl, the mmap'ed struct kvm_run, and (when
/// enabled) its dirty ring. <see cref="Run"/> is KVM_RUN and returns the decoded exit.
/// </summary>
internal sealed class KvmVcpu : IDisposable
{
    public int Index { get; }
    public KvmFd Fd { get; }
    private readonly KvmMapping _run;
    public KvmDirtyRing? Ring { get; }
    /// <summary>Kernel tid of the thread currently inside the run loop (0 = none), the target of kicks.</summary>
    private int _tid;
    private volatile bool _stopRequested;

    private readonly int _mmapSize;
    private static readonly nuint RunRequest = KvmIoctl.KVM_RUN;

    public KvmVcpu(KvmVmFd vm, int index, int mmapSize, int ringBytes)
    {
        Index = index;
        _mmapSize = mmapSize;
        Fd = vm.CreateVcpu(index);
        try
        {
            _run = new KvmMapping(Fd, (nuint)mmapSize, Libc.PROT_READ | Libc.PROT_WRITE, 0, $"kvm_run of vCPU {index}");
            if (ringBytes > 0)
                Ring = new KvmDirtyRing(this, ringBytes);
        }
        catch
        {
            _run?.Dispose();
            Fd.Dispose();
            throw;
        }
    }

    /// <summary>The shared <c>struct kvm_run</c> (valid while the vCPU lives: <see cref="KvmMapping.Pointer"/> throws after).</summary>
    internal unsafe kvm_run* RunArea => (kvm_run*)_run.Pointer;

    /// <summary>
    /// KVM_RUN once: the exit KVM reports, decoded from kvm_run (<see cref="KvmExit.Kicked"/> when KVM_RUN returned
    /// -EINTR or -EAGAIN: a kick or immediate_exit). Other errors throw with the errno.
    /// </summary>
    public KvmExit Run()
    {
        if (Libc.ioctl(Fd.Fd, RunRequest, 0ul) < 0)
        {
            int errno = Libc.Errno;
            if (errno == Errno.EINTR || errno == Errno.EAGAIN) return KvmExit.Kicked;
            throw new KvmException("KVM_RUN", errno, $"vCPU {Index}");
        }
        // Safe because the mapping is live (Pointer throws otherwise) and is _mmapSize bytes, what Decode bounds its reads by.
        unsafe { return KvmExit.Decode(RunArea, _mmapSize); }
    }

    public kvm_regs GetRegs()
    {
        kvm_regs r;
        // Safe because the kernel writes sizeof(kvm_regs) bytes (the size in the request) into the local.
        unsafe { Fd.Ioctl(KvmIoctl.KVM_GET_REGS, &r); }
        return r;
    }

    public void SetRegs(in kvm_regs regs)
    {
        // Safe because the kernel only reads sizeof(kvm_regs) bytes from the pinned argument.
        unsafe { fixed (kvm_regs* p = &regs) Fd.Ioctl(KvmIoctl.KVM_SET_REGS, p); }
    }

    public kvm_sregs GetSregs()
    {
        kvm_sregs s;
        // Safe because the kernel writes sizeof(kvm_sregs) bytes (the size in the request) into the local.
        unsafe { Fd.Ioctl(KvmIoctl.KVM_GET_SREGS, &s); }
        return s;
    }

    public void SetSregs(in kvm_sregs sregs)
    {
        // Safe because the kernel only reads sizeof(kvm_sregs) bytes from the pinned argument.
        unsafe { fixed (kvm_sregs* p = &sregs) Fd.Ioctl(KvmIoctl.KVM_SET_SREGS, p, "long-mode control registers/segments rejected"); }
    }

    /// <summary>KVM_SET_CPUID2 with a raw struct kvm_cpuid2 + entries (as KVM_GET_SUPPORTED_CPUID returned it).</summary>
    public void SetCpuid2(byte[] cpuid)
    {
        // Safe because the buffer is KVM_GET_SUPPORTED_CPUID's own answer: nent entries follow the header, as the kernel reads them.
        unsafe { fixed (byte* p = cpuid) Fd.Ioctl(KvmIoctl.KVM_SET_CPUID2, p); }
    }

    /// <summary>Registers for error reports; never throws (returns null if the vCPU cannot be read).</summary>
    public KvmRegisters? TryRegisters()
    {
        try
        {
            var r = GetRegs();
            var s = GetSregs();
            return new KvmRegisters(r.rip, r.rsp, r.rbp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi,
                s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector);
        }
        catch (Exception)
        {
            return null;
        }
    }

    /// <summary>Called on the vCPU thread before its run loop.</summary>
    public void EnterRunThread()
    {
        _stopRequested = false;
        Volatile.Write(ref _tid, LibcKvm.GetTid());
    }

    public void LeaveRunThread() => Volatile.Write(ref _tid, 0);

    public bool StopRequested => _stopRequested;

    /// <summary>
    /// Ask the vCPU to leave KVM_RUN: immediate_exit covers the window before the next KVM_RUN, the signal
    /// interrupts one already in the guest (KVM_RUN then returns -EINTR).
    /// </summary>
    public void RequestStop()
    {
        _stopRequested = true;
        if (_disposed) return;
        // Safe because kvm_run stays mapped until Dispose, which sets _disposed first (RunArea throws once unmapped).
        unsafe { Volatile.Write(ref RunArea->immediate_exit, 1); }
        KvmSignals.Kick(Volatile.Read(ref _tid));
    }

    public void ClearImmediateExit()
    {
        // Safe because kvm_run stays mapped until Dispose, which sets _disposed first (RunArea throws once unmapped).
        if (!_disposed) unsafe { Volatile.Write(ref RunArea->immediate_exit, 0); }
    }

    private volatile bool _disposed;

    public void Dispose()
    {
        _disposed = true;
        Ring?.Dispose();
        _run.Dispose();
        Fd.Dispose();
    }
}
