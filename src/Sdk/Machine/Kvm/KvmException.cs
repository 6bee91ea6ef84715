using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>A KVM ioctl (or mmap of a KVM fd) failed: the errno, its name and the ioctl's kernel name.</summary>
public class KvmException : LibcException
{
    /// <summary>A failed KVM call: its name, the errno and what was being done.</summary>
    public KvmException(string call, int errno, string? doing = null)
        : base(errno, call, doing, FromErrno(errno, call, doing).Message) { }

    internal static KvmException Last(string call, string? doing = null) => new(call, Libc.Errno, doing);
}

/// <summary>The guest stopped in a way the harness cannot continue from (triple fault, failed entry,
/// emulation failure, unexpected exit): the exit reason plus the vCPU's registers at that moment.</summary>
public class KvmGuestException : Exception
{
    /// <summary>The vCPU that exited.</summary>
    public int Vcpu { get; }
    /// <summary>Why it exited (kvm_run.exit_reason).</summary>
    public KvmExitReason ExitReason { get; }
    /// <summary>The vCPU's registers at the exit, when they could be read.</summary>
    public KvmRegisters? Registers { get; }

    /// <summary>An unexpected exit of <paramref name="vcpu"/>.</summary>
    public KvmGuestException(int vcpu, KvmExitReason reason, string detail, KvmRegisters? regs)
        : base($"vCPU {vcpu}: {reason}: {detail}" + (regs is null ? "" : $"\n  {regs}"))
    {
        Vcpu = vcpu;
        ExitReason = reason;
        Registers = regs;
    }
}

/// <summary>The guest program called the assert ucall: the message is the guest's.</summary>
public class GuestAssertException : Exception
{
    /// <summary>The vCPU whose guest code asserted.</summary>
    public int Vcpu { get; }
    /// <summary>The guest's assertion message.</summary>
    public string GuestMessage { get; }

    /// <summary>A failed guest assertion on <paramref name="vcpu"/>.</summary>
    public GuestAssertException(int vcpu, string message, KvmRegisters? regs)
        : base($"guest assert on vCPU {vcpu}: {message}" + (regs is null ? "" : $"\n  {regs}"))
    {
        Vcpu = vcpu;
        GuestMessage = message;
    }
}

/// <summary>Register snapshot of a vCPU (from KVM_GET_REGS / KVM_GET_SREGS).</summary>
public sealed record KvmRegisters(
    ulong Rip, ulong Rsp, ulong Rbp, ulong Rflags,
    ulong Rax, ulong Rbx, ulong Rcx, ulong Rdx, ulong Rsi, ulong Rdi,
    ulong Cr0, ulong Cr2, ulong Cr3, ulong Cr4, ulong Efer, ushort Cs)
{
    /// <inheritdoc/>
    public override string ToString() =>
        $"RIP={Rip:x16} RSP={Rsp:x16} RFLAGS={Rflags:x} RAX={Rax:x} RBX={Rbx:x} RCX={Rcx:x} RDX={Rdx:x} RSI={Rsi:x} RDI={Rdi:x} " +
        $"CR0={Cr0:x} CR2={Cr2:x} CR3={Cr3:x} CR4={Cr4:x} EFER={Efer:x} CS={Cs:x}";
}

