using System.Runtime.InteropServices;

namespace VirtLab.Sdk.Native;

/// <summary>libc calls the KVM backend needs beyond the shared <see cref="Libc"/> class: pread for the
/// binary stats fd, mprotect, and the signal calls that kick a vCPU thread out of KVM_RUN.</summary>
internal static unsafe partial class LibcKvm
{
    private const string C = "libc";

    public const int SIGUSR1 = 10, SIGUSR2 = 12;

    [LibraryImport(C, EntryPoint = "mprotect", SetLastError = true)]
    public static partial int Mprotect(nint addr, nuint length, int prot);

    [LibraryImport(C, EntryPoint = "pread", SetLastError = true)]
    public static partial nint Pread(int fd, void* buf, nuint count, long offset);

    [LibraryImport(C, EntryPoint = "gettid")]
    public static partial int GetTid();

    [LibraryImport(C, EntryPoint = "getpid")]
    public static partial int GetPid();

    [LibraryImport(C, EntryPoint = "tgkill", SetLastError = true)]
    public static partial int Tgkill(int tgid, int tid, int sig);

    [LibraryImport(C, EntryPoint = "sigaction", SetLastError = true)]
    public static partial int Sigaction(int sig, in SigAction act, out SigAction oldact);

    [LibraryImport(C, EntryPoint = "sigaction", SetLastError = true)]
    public static partial int SigactionQuery(int sig, nint act, out SigAction oldact);

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
