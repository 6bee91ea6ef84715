using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public sealed class ProgressTests
{
    private sealed class Recorder : IProgressListener
    {
        public readonly List<string> Events = [];
        public readonly List<ProgressReporter> Reporters = [];
        public void Started(ProgressReporter r) { lock (Events) { Events.Add($"start {r.Name} {r.Total} {r.Unit}"); Reporters.Add(r); } }
        public void Finished(ProgressReporter r) { lock (Events) Events.Add($"end {r.Name} {r.Done}"); }
    }

    [Fact]
    public void Without_a_listener_reporting_is_a_no_op()
    {
        Assert.False(Progress.IsListening);
        var r = Progress.Start("x", 10, "steps");
        Assert.Same(ProgressReporter.None, r);
        r.Advance(5);
        Assert.Equal(0, r.Done);
        var calls = new List<(long, long)>();
        Progress.Chunked("populate", 10 << 20, 1 << 20, (o, l) => calls.Add((o, l)));
        Assert.Equal([(0L, 10L << 20)], calls); // one call over the whole range
    }

    [Fact]
    public void A_listener_sees_start_advances_from_any_thread_and_end()
    {
        var rec = new Recorder();
        using (Progress.Listen(rec))
        {
            using (var r = Progress.Start("passes", 400, "vCPU passes"))
                Parallel.For(0, 400, _ => r.Advance());
            // Threads started inside the flow inherit the listener.
            var t = new Thread(() => { using var r = Progress.Start("thread", 1); r.Advance(); });
            t.Start();
            t.Join();
        }
        Assert.False(Progress.IsListening);
        Assert.Equal(["start passes 400 vCPU passes", "end passes 400", "start thread 1 ", "end thread 1"], rec.Events);
        Assert.Throws<ArgumentOutOfRangeException>(() => { using var _ = Progress.Listen(rec); Progress.Start("neg", -1); });
    }

    [Fact]
    public void Chunked_covers_the_range_in_pieces_when_watched()
    {
        var rec = new Recorder();
        var calls = new List<(long, long)>();
        using (Progress.Listen(rec))
            Progress.Chunked("populate", 10, 4, (o, l) => calls.Add((o, l)));
        Assert.Equal([(0L, 4L), (4L, 4L), (8L, 2L)], calls);
        Assert.Equal(["start populate 10 B", "end populate 10"], rec.Events);
    }

    [Fact]
    public void Populate_and_workloads_report_progress()
    {
        var rec = new Recorder();
        using var vm = Vm.Create(memory: 160.MiB(), vcpus: 2, backend: Backend.Sim); // 128 MiB + 32 MiB pieces
        using (Progress.Listen(rec))
        {
            vm.Memory.Populate(vm.TestSlot.Gpa, 160L << 20);
            vm.Run(Workload.Write(stride: 1 << 20, passes: 3) with { SyncEachPass = true });
        }
        Assert.Equal(["start populate 167772160 B", "end populate 167772160", "start write 6 vCPU passes", "end write 6"], rec.Events);
    }
}
