using Iced.Intel;
using VirtLab.Sdk.Machine.Kvm;
using Xunit;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace VirtLab.Sdk.Tests.Kvm;

[Collection("KVM")]
public class KvmHygieneTests(ITestOutputHelper output)
{
    /// <summary>
    /// Open fds of the kinds a VM owns: /dev/kvm, the VM, vCPU and stats anon inodes, memfds. Counting only these keeps
    /// the leak checks exact while the test host opens and closes unrelated files (logs, pipes) on other threads.
    /// </summary>
    internal static int OpenFds()
    {
        int n = 0;
        foreach (var fd in Directory.GetFiles("/proc/self/fd"))
        {
            string? target;
            try { target = new FileInfo(fd).LinkTarget; }
            catch (IOException) { continue; } // closed while we looked
            if (target is not null && (target.StartsWith("/dev/kvm") || target.StartsWith("anon_inode:kvm") || target.StartsWith("/memfd:")))
                n++;
        }
        return n;
    }

    internal static long RssBytes()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("VmRSS:")) return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return 0;
    }

    internal static int Threads() => Directory.GetDirectories("/proc/self/task").Length;

    [KvmFact]
    public void Machine_create_run_dispose_200_times_leaves_no_fds_threads_or_memory()
    {
        var code = KvmRig.Assemble(a => a.UcallDone());
        void Cycle()
        {
            using var r = new KvmRig(vcpus: 2);
            _ = r.M.VmStats.Read("pages_4k");
            _ = r.M.VcpuStats(1);
            r.M.Run(code, 0, new GuestCallbacks(), CancellationToken.None);
        }
        for (int i = 0; i < 5; i++) Cycle(); // warm up JIT, thread pool, caches
        GC.Collect(); GC.WaitForPendingFinalizers();
        int fds = OpenFds(), threads = Threads();
        long rss = RssBytes();
        using (var probe = new KvmRig(vcpus: 2))
            Assert.True(OpenFds() > fds, $"the fd count sees a live VM's fds (vCPUs come lazily, at the first run): {fds} → {OpenFds()}");
        var sw = System.Diagnostics.Stopwatch.StartNew();
        for (int i = 0; i < 200; i++) Cycle();
        GC.Collect(); GC.WaitForPendingFinalizers();
        output.WriteLine($"200 cycles in {sw.ElapsedMilliseconds} ms; fds {fds}→{OpenFds()}, threads {threads}→{Threads()}, RSS {rss >> 20}→{RssBytes() >> 20} MiB");
        Assert.Equal(fds, OpenFds());
        Assert.True(Threads() <= threads + 1, $"threads {threads} → {Threads()}");
        Assert.True(RssBytes() - rss < 24 << 20, $"RSS grew by {(RssBytes() - rss) >> 20} MiB");
    }
}
