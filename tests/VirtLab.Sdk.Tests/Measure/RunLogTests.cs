using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public class RunLogTests
{
    [Fact]
    public void An_entered_writer_receives_lines_from_threads_the_flow_starts_and_is_left_on_dispose()
    {
        var w = new StringWriter();
        var outside = RunLog.Current;
        using (RunLog.Enter(w))
        {
            Assert.Same(w, RunLog.Current);
            // A vCPU thread is a plain Thread started inside the run: it must report to the same writer.
            var t = new Thread(() => RunLog.WriteLine("[vcpu0] hello"));
            t.Start();
            t.Join();
            RunLog.WriteLine("[vcpu1] bye");
        }
        Assert.Same(outside, RunLog.Current);
        Assert.Equal("[vcpu0] hello\n[vcpu1] bye\n", w.ToString().ReplaceLineEndings("\n"));
    }

    [Fact]
    public void Another_flow_does_not_see_an_entered_writer()
    {
        var w = new StringWriter();
        using var _ = RunLog.Enter(w);
        TextWriter? seen = w;
        var t = new Thread(() => seen = RunLog.Current);
        using (ExecutionContext.SuppressFlow()) t.Start(); // a thread that is not part of this run
        t.Join();
        Assert.NotSame(w, seen);
    }
}
