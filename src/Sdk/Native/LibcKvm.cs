using System.Runtime.InteropServices;

namespace VirtLab.Sdk.Native;

/// <summary>libc calls the KVM backend needs beyond the shared <see cref="Libc"/> class: pread for the
/// binary stats fd, mprotect, and the signal calls that kick a vCPU thread out of KVM_RUN.</summary>
internal static unsafe class LibcKvm
{
    private const string C = "libc";

    public const int SIGUSR1 = 10, SIGUSR2 = 12;

    [DllImport(C, EntryPoint = "mprotect", SetLastError = true)]
    public static extern int Mprotect(nint addr, nuint length, int prot);

    [DllImport(C, EntryPoint = "pread", SetLastError = true)]
    public static extern nint Pread(int fd, void* buf, nuint count, long offset);

    [DllImport(C, EntryPoint = "gettid")]
    public static extern int GetTid();

    [DllImport(C, EntryPoint = "getpid")]
    public static extern int GetPid();

    [DllImport(C, EntryPoint = "tgkill", SetLastError = true)]
    public static extern int Tgkill(int tgid, int tid, int sig);

    [DllImport(C, EntryPoint = "sigaction", SetLastError = true)]
    public static extern int Sigaction(int sig, in SigAction act, out SigAction oldact);

    [DllImport(C, EntryPoint = "sigaction", SetLastError = true)]
    public static extern int SigactionQuery(int sig, nint act, out SigAction oldact);

    public const int SA_ONSTACK = 0x08000000, SA_RESTART = 0x10000000;

    /// <summary>glibc x86-64 struct sigaction: handler, 1024-bit mask, flags, restorer (152 bytes).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct SigAction
    {
        public nint sa_handler;
        public fixed ulong sa_mask[16];
        public int sa_flags;
        public int pad;
        public nint sa_restorer;
    }
}
