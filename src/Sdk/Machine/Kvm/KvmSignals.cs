using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// Kicking a vCPU thread out of KVM_RUN: KVM only returns -EINTR when a signal is pending, and a signal
/// whose disposition is SIG_IGN is discarded before it is queued, so the kick signal needs a handler.
/// The handler is a single <c>ret</c> in an executable page: it runs in signal context, so it must not be
/// managed code. glibc's sigaction supplies the SA_RESTORER trampoline.
/// </summary>
internal static class KvmSignals
{
    private static readonly object Gate = new();
    private static int _signal;
    private static nint _handlerPage;

    /// <summary>The signal used to kick vCPU threads (installed on first use).</summary>
    public static int KickSignal
    {
        get
        {
            lock (Gate)
            {
                if (_signal == 0) Install();
                return _signal;
            }
        }
    }

    private static void Install()
    {
        nint page = Libc.mmap(0, 4096, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS, -1, 0);
        if (page == Libc.MAP_FAILED) throw LibcException.FromErrno(Libc.Errno, "mmap", "allocating the vCPU kick-signal handler page");
        // Safe because page is a fresh, writable 4 KiB mapping.
        unsafe { *(byte*)page = 0xC3; } // ret
        if (LibcKvm.Mprotect(page, 4096, Libc.PROT_READ | Libc.PROT_EXEC) != 0) throw LibcException.FromErrno(Libc.Errno, "mprotect", "making the vCPU kick-signal handler executable");
        _handlerPage = page;

        // Take the first of SIGUSR1/SIGUSR2 that nobody in this process (the runtime, a host app) handles.
        foreach (var sig in new[] { LibcKvm.SIGUSR1, LibcKvm.SIGUSR2 })
        {
            if (LibcKvm.SigactionQuery(sig, 0, out var old) != 0) continue;
            if (old.sa_handler != 0 && old.sa_handler != _handlerPage) continue; // SIG_DFL is 0
            // SA_RESTART: a stray kick (a recycled tid) only restarts another thread's syscall; KVM_RUN itself
            // returns -EINTR, which is never restarted.
            var act = new LibcKvm.SigAction { sa_handler = _handlerPage, sa_flags = LibcKvm.SA_ONSTACK | LibcKvm.SA_RESTART };
            if (LibcKvm.Sigaction(sig, act, out _) != 0) throw LibcException.FromErrno(Libc.Errno, "sigaction", $"installing the vCPU kick handler for signal {sig}");
            _signal = sig;
            return;
        }
        throw new InvalidOperationException("SIGUSR1 and SIGUSR2 both have handlers in this process; cannot install the vCPU kick signal");
    }

    /// <summary>Send the kick signal to one thread of this process.</summary>
    public static void Kick(int tid)
    {
        if (tid <= 0) return;
        LibcKvm.Tgkill(LibcKvm.GetPid(), tid, KickSignal); // ESRCH when the thread already ended: harmless
    }
}
