using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Measure;

/// <summary>
/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID: user + system, guest time of a vCPU in KVM_RUN included).
/// Unlike a wall clock it does not count the time the thread waited for a CPU, so on a busy host it compares two ways
/// of doing the same work on the same thread (e.g. a populate through <c>Vm.Run</c> and with bare ioctls).
/// </summary>
public static class ThreadCpu
{
    /// <summary>The calling thread's CPU time so far, in seconds (nanosecond resolution).</summary>
    public static double Seconds
    {
        get
        {
            Libc.Timespec t;
            // Safe because the kernel writes one timespec into the local for the duration of the call.
            unsafe { if (Libc.clock_gettime(Libc.CLOCK_THREAD_CPUTIME_ID, &t) != 0) throw new InvalidOperationException($"clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed: errno {Libc.Errno}"); }
            return t.tv_sec + t.tv_nsec * 1e-9;
        }
    }
}
