using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// Thread placement: which CPUs the calling thread may run on (sched_setaffinity(2) / sched_getaffinity(2) with pid 0,
/// which names the calling thread, not the process). .NET's <c>ProcessThread.ProcessorAffinity</c> cannot set one
/// thread's mask on Linux. A benchmark that runs a device thread beside a driver thread (a vhost worker beside a vCPU)
/// places them on different CPUs, as vhost benchmarks do, so that eventfd wake-ups do not pull both onto one CPU.
/// Failures are the kernel's errno, unchanged: EINVAL when the set holds no CPU the thread may use (offline, outside
/// its cpuset, beyond the machine), EPERM when the caller may not change the thread's mask.
/// </summary>
public static class CpuAffinity
{
    // cpu_set_t's 1024 bits; larger machines get a larger mask (the kernel wants at least nr_cpu_ids bits to report).
    const int DefaultWords = 16, MaxWords = 1 << 12;

    /// <summary>The CPUs the calling thread may run on, ascending. Throws <see cref="LibcException"/> if the kernel refuses.</summary>
    public static unsafe int[] OfCurrentThread()
    {
        for (int words = DefaultWords; ; words *= 2)
        {
            var mask = new ulong[words];
            fixed (ulong* p = mask)
                if (Libc.sched_getaffinity(0, (nuint)(words * 8), p) == 0) return Cpus(mask);
            int errno = Libc.Errno;
            // EINVAL here means the mask is smaller than the kernel's CPU count: retry with a larger one.
            if (errno != Errno.EINVAL || words >= MaxWords) throw LibcException.FromErrno(errno, "sched_getaffinity", "reading the calling thread's CPUs");
        }
    }

    /// <summary>The CPU the calling thread is running on at this instant (sched_getcpu), or -1 when unknown.</summary>
    public static int CurrentCpu => Libc.sched_getcpu();

    /// <summary>
    /// Restricts the calling thread to <paramref name="cpus"/>. Returns 0, or the kernel's errno (EINVAL: none of the
    /// CPUs is one the thread may use; EPERM: not permitted), in which case the thread's set is unchanged.
    /// </summary>
    public static unsafe int TrySetCurrentThread(params ReadOnlySpan<int> cpus)
    {
        if (cpus.IsEmpty) throw new ArgumentException("name at least one CPU", nameof(cpus));
        int max = 0;
        foreach (var c in cpus)
        {
            if (c < 0) throw new ArgumentOutOfRangeException(nameof(cpus), c, "CPU numbers are 0 or more");
            max = Math.Max(max, c);
        }
        // Bits beyond the kernel's CPU count are ignored by the kernel; a set left empty by that is its EINVAL.
        int words = Math.Max(DefaultWords, max / 64 + 1);
        var mask = new ulong[words];
        foreach (var c in cpus) mask[c / 64] |= 1UL << (c % 64);
        fixed (ulong* p = mask)
            return Libc.sched_setaffinity(0, (nuint)(words * 8), p) == 0 ? 0 : Libc.Errno;
    }

    /// <summary>As <see cref="TrySetCurrentThread"/>, throwing a <see cref="LibcException"/> that says which CPUs were
    /// asked for and which the thread may use.</summary>
    public static void SetCurrentThread(params ReadOnlySpan<int> cpus)
    {
        int errno = TrySetCurrentThread(cpus);
        if (errno != 0) throw Failure(errno, cpus);
    }

    /// <summary>
    /// Pins the calling thread to <paramref name="cpu"/> until the returned scope is disposed (on the same thread),
    /// which restores the set it had. Throws <see cref="LibcException"/> when the kernel refuses (see <see cref="Explain"/>).
    /// </summary>
    public static PinnedThread Pin(int cpu)
    {
        var before = OfCurrentThread();
        SetCurrentThread(cpu);
        return new PinnedThread(cpu, before);
    }

    /// <summary>
    /// Pins the calling thread to <paramref name="cpu"/> if the kernel allows it: the scope (restoring the previous set
    /// when disposed), or null and <paramref name="why"/> saying what the kernel answered. For code that runs
    /// unplaced rather than fail.
    /// </summary>
    public static PinnedThread? TryPin(int cpu, out string? why)
    {
        try
        {
            var p = Pin(cpu);
            why = null;
            return p;
        }
        catch (LibcException e)
        {
            why = e.Message;
            return null;
        }
    }

    /// <summary>What an errno from <see cref="TrySetCurrentThread"/> means for <paramref name="cpus"/>, naming the CPUs
    /// the calling thread may use.</summary>
    public static string Explain(int errno, ReadOnlySpan<int> cpus)
    {
        string allowed;
        try { allowed = Format(OfCurrentThread()); }
        catch (LibcException) { allowed = "unknown"; }
        var asked = Format(cpus.ToArray());
        return errno switch
        {
            Errno.EINVAL => $"CPU {asked} is not one this thread may run on (allowed: {allowed}; offline, outside the cpuset or beyond the machine)",
            Errno.EPERM => $"not permitted to place this thread on CPU {asked} (allowed: {allowed})",
            _ => $"placing this thread on CPU {asked} failed (allowed: {allowed})",
        };
    }

    /// <summary>A CPU list as the kernel prints one (cpulist: <c>0-3,6</c>).</summary>
    public static string Format(IEnumerable<int> cpus)
    {
        var sorted = cpus.Distinct().Order().ToArray();
        var parts = new List<string>();
        for (int i = 0; i < sorted.Length;)
        {
            int j = i;
            while (j + 1 < sorted.Length && sorted[j + 1] == sorted[j] + 1) j++;
            parts.Add(j == i ? $"{sorted[i]}" : $"{sorted[i]}-{sorted[j]}");
            i = j + 1;
        }
        return parts.Count == 0 ? "none" : string.Join(",", parts);
    }

    static LibcException Failure(int errno, ReadOnlySpan<int> cpus)
    {
        var text = Explain(errno, cpus);
        return new LibcException(errno, "sched_setaffinity", text, $"{text}: sched_setaffinity failed: {Errno.Name(errno)}");
    }

    static int[] Cpus(ReadOnlySpan<ulong> mask)
    {
        var list = new List<int>();
        for (int w = 0; w < mask.Length; w++)
            for (ulong bits = mask[w]; bits != 0; bits &= bits - 1)
                list.Add(w * 64 + System.Numerics.BitOperations.TrailingZeroCount(bits));
        return list.ToArray();
    }
}

/// <summary>A thread pinned by <see cref="CpuAffinity.Pin"/>: disposing it (on that thread) restores the CPUs it had.</summary>
public sealed class PinnedThread : IDisposable
{
    readonly int[] _previous;
    readonly int _threadId = Environment.CurrentManagedThreadId;
    bool _disposed;

    internal PinnedThread(int cpu, int[] previous)
    {
        Cpu = cpu;
        _previous = previous;
    }

    /// <summary>The CPU the thread is pinned to.</summary>
    public int Cpu { get; }

    /// <summary>The CPUs the thread may run on again after <see cref="Dispose"/>.</summary>
    public IReadOnlyList<int> Previous => _previous;

    /// <summary>Restores the previous set. Must run on the pinned thread (a mask is per thread).</summary>
    public void Dispose()
    {
        if (_disposed) return;
        if (Environment.CurrentManagedThreadId != _threadId)
            throw new InvalidOperationException($"a thread pinned to CPU {Cpu} must be unpinned on itself (managed thread {_threadId}), not on thread {Environment.CurrentManagedThreadId}");
        _disposed = true;
        CpuAffinity.SetCurrentThread(_previous);
    }

    /// <inheritdoc/>
    public override string ToString() => $"pinned to CPU {Cpu} (was {CpuAffinity.Format(_previous)})";
}
