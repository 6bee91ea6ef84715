using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Native;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>sched_setaffinity / sched_getaffinity on the calling thread, for real: each test runs on a thread of its own
/// so that no mask leaks into the test runner's threads.</summary>
public class CpuAffinityTests
{
    static void OnOwnThread(Action body)
    {
        Exception? failure = null;
        var t = new Thread(() => { try { body(); } catch (Exception e) { failure = e; } });
        t.Start();
        t.Join();
        if (failure is not null) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(failure).Throw();
    }

    static int[] ProcStatusCpus(int tid)
    {
        // The kernel's own view of the thread's mask: Cpus_allowed_list in /proc/self/task/TID/status.
        var line = File.ReadLines($"/proc/self/task/{tid}/status").Single(l => l.StartsWith("Cpus_allowed_list:"));
        return line["Cpus_allowed_list:".Length..].Trim().Split(',').SelectMany(part =>
        {
            var ends = part.Split('-').Select(int.Parse).ToArray();
            return Enumerable.Range(ends[0], ends[^1] - ends[0] + 1);
        }).ToArray();
    }

    [Fact]
    public void Set_then_read_back_one_cpu_and_the_kernel_agrees()
    {
        OnOwnThread(() =>
        {
            var allowed = CpuAffinity.OfCurrentThread();
            Assert.NotEmpty(allowed);
            Assert.Equal(ProcStatusCpus(Tid()), allowed);
            var cpu = allowed[^1];
            Assert.Equal(0, CpuAffinity.TrySetCurrentThread(cpu));
            Assert.Equal([cpu], CpuAffinity.OfCurrentThread());
            Assert.Equal([cpu], ProcStatusCpus(Tid()));
            Assert.Equal(cpu, CpuAffinity.CurrentCpu);          // the kernel moved the thread before returning
            Assert.Equal(0, CpuAffinity.TrySetCurrentThread(allowed));
            Assert.Equal(allowed, CpuAffinity.OfCurrentThread());
        });
    }

    [Fact]
    public void A_cpu_the_machine_does_not_have_is_the_kernels_EINVAL_and_changes_nothing()
    {
        OnOwnThread(() =>
        {
            var before = CpuAffinity.OfCurrentThread();
            // Beyond any machine this runs on: the kernel ignores bits past nr_cpu_ids, leaving an empty set: EINVAL.
            Assert.Equal(Errno.EINVAL, CpuAffinity.TrySetCurrentThread(8191));
            Assert.Equal(before, CpuAffinity.OfCurrentThread());
            var e = Assert.Throws<LibcException>(() => CpuAffinity.SetCurrentThread(8191));
            Assert.Equal(Errno.EINVAL, e.Errno);
            Assert.Contains("CPU 8191 is not one this thread may run on", e.Message);
            Assert.Contains($"allowed: {CpuAffinity.Format(before)}", e.Message);
            Assert.Null(CpuAffinity.TryPin(8191, out var why));
            Assert.Contains("EINVAL", why);
            Assert.Equal(before, CpuAffinity.OfCurrentThread());
            Assert.Throws<ArgumentOutOfRangeException>(() => CpuAffinity.TrySetCurrentThread(-1));
        });
    }

    [Fact]
    public void Pin_restores_the_previous_set_and_only_on_its_own_thread()
    {
        OnOwnThread(() =>
        {
            var before = CpuAffinity.OfCurrentThread();
            var scope = CpuAffinity.Pin(before[0]);
            Assert.Equal([before[0]], CpuAffinity.OfCurrentThread());
            Exception? elsewhere = null;
            var other = new Thread(() => { try { scope.Dispose(); } catch (Exception e) { elsewhere = e; } });
            other.Start();
            other.Join();
            Assert.IsType<InvalidOperationException>(elsewhere);
            scope.Dispose();
            Assert.Equal(before, CpuAffinity.OfCurrentThread());
        });
    }

    [Fact]
    public void Format_writes_cpu_lists_as_the_kernel_does()
    {
        Assert.Equal("0-3,6,8-9", CpuAffinity.Format([9, 0, 1, 2, 3, 6, 8]));
        Assert.Equal("5", CpuAffinity.Format([5]));
        Assert.Equal("none", CpuAffinity.Format([]));
    }

    static int Tid() => int.Parse(File.ReadAllText("/proc/thread-self/stat").Split(' ')[0]);
}
