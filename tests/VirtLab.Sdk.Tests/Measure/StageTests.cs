using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public class StageTests
{
    private static RecipeGlobals G() => new(new RecipeContext { Log = null });

    [Fact]
    public void Action_func_and_using_forms_record_stages_in_order()
    {
        var g = G();
        g.Stage("alloc", () => { });
        var v = g.Stage("compute", () => 42);
        using (var s = g.Stage("populate"))
            s.Count("pages", 10).Count("pages", 5).Count("faults");
        Assert.Equal(42, v);
        var r = g.Stages.Records;
        Assert.Equal(["alloc", "compute", "populate"], r.Select(x => x.Name));
        Assert.All(r, x => Assert.True(x.Seconds >= 0));
        Assert.All(r, x => Assert.Equal(1, x.Runs));
        Assert.Equal(15, r[2].Counters["pages"]);
        Assert.Equal(1, r[2].Counters["faults"]);
    }

    [Fact]
    public async Task Async_stage_covers_the_awaited_work_and_counts_inside()
    {
        var g = G();
        var result = await g.StageAsync("wait", async () => { await Task.Yield(); g.Count("ticks", 3); return "done"; });
        await g.StageAsync("void", () => Task.CompletedTask);
        Assert.Equal("done", result);
        Assert.Equal(3, g.Stages["wait"]!.Counters["ticks"]);
        Assert.NotNull(g.Stages["void"]);
    }

    [Fact]
    public void Async_lambda_in_sync_stage_is_refused_before_running()
    {
        var g = G();
        bool ran = false;
        Func<Task> body = async () => { ran = true; await Task.Yield(); };
        var e = Assert.Throws<ArgumentException>(Bad);
        void Bad() => g.Stage("bad", body);
        Assert.Contains("StageAsync", e.Message);
        Assert.False(ran);
    }

    [Fact]
    public void Nested_stages_get_a_parent_and_do_not_count_twice_in_total()
    {
        var set = new StageSet();
        set.Record("outer-free", TimeSpan.FromSeconds(1));
        using (set.Start("run"))
        {
            set.Record("a", TimeSpan.FromSeconds(2));
            set.Count("iterations", 2);
        }
        set.Record("after", TimeSpan.FromSeconds(3));
        var r = set.Records;
        Assert.Equal(["outer-free", "run", "a", "after"], r.Select(x => x.Name));
        Assert.Equal("run", r[2].Parent);
        Assert.Null(r[1].Parent);
        Assert.Equal(2, r[1].Counters["iterations"]);
        Assert.Equal(1 + r[1].Seconds + 3, set.TotalSeconds, 9);
    }

    [Fact]
    public void Same_stage_in_a_loop_accumulates_runs_time_and_counters()
    {
        var set = new StageSet();
        for (int i = 0; i < 3; i++)
        {
            set.Record("translate", TimeSpan.FromMilliseconds(10), [KeyValuePair.Create("pfns", 100L)]);
        }
        var r = Assert.Single(set.Records);
        Assert.Equal(3, r.Runs);
        Assert.Equal(0.03, r.Seconds, 6);
        Assert.Equal(300, r.Counters["pfns"]);
    }

    [Fact]
    public void Stage_that_throws_is_still_recorded_and_current_is_restored()
    {
        var g = G();
        Assert.Throws<InvalidOperationException>(() => g.Stage("boom", () => throw new InvalidOperationException("x")));
        Assert.Equal(1, g.Stages["boom"]!.Runs);
        Assert.Null(g.Stages.Current);
        g.Stage("next", () => { });
        Assert.Null(g.Stages["next"]!.Parent);
    }

    [Fact]
    public void Count_outside_a_stage_says_how_to_fix_it()
    {
        var e = Assert.Throws<InvalidOperationException>(() => G().Count("pages", 1));
        Assert.Contains("outside a stage", e.Message);
    }

    [Fact]
    public void Dispose_twice_counts_once()
    {
        var set = new StageSet();
        var t = set.Start("x");
        t.Dispose();
        t.Dispose();
        Assert.Equal(1, set["x"]!.Runs);
    }

    [Fact]
    public void Include_nests_a_plugin_stage_table_under_the_current_stage()
    {
        var plugin = new StageSet("inflate");
        plugin.Record("allocate", TimeSpan.FromMilliseconds(1), [KeyValuePair.Create("pages", 4L)]);
        plugin.Record("madvise", TimeSpan.FromMilliseconds(2));
        var g = G();
        g.Stage("inflate", () => g.Stages.Include(plugin));
        var r = g.Stages.Records;
        Assert.Equal(["inflate", "allocate", "madvise"], r.Select(x => x.Name));
        Assert.All(r.Skip(1), x => Assert.Equal("inflate", x.Parent));
        Assert.Equal(4, r[1].Counters["pages"]);
    }

    [Fact]
    public void Parallel_stages_on_threads_each_record()
    {
        var set = new StageSet();
        Parallel.For(0, 8, i => { using var t = set.Start("vcpu" + i); t.Count("exits", i); });
        Assert.Equal(8, set.Records.Count);
        Assert.All(set.Records, r => Assert.Null(r.Parent));
        Assert.Null(set.Current);
    }

    [Fact]
    public void Renders_table_and_text_with_share_and_counters()
    {
        var set = new StageSet("inflate 768 MiB");
        set.Record("allocate", TimeSpan.FromMilliseconds(250), [KeyValuePair.Create("pages", 196608L)]);
        set.Record("madvise", TimeSpan.FromMilliseconds(750));
        var text = set.ToString();
        Assert.Contains("inflate 768 MiB", text);
        Assert.Contains("25.0 %", text);
        Assert.Contains("75.0 %", text);
        Assert.Contains("pages 196,608 (786 k/s)", text);
        Assert.Contains("total", text);

        var sw = new StringWriter();
        var console = Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings
        {
            Out = new Spectre.Console.AnsiConsoleOutput(sw),
            Ansi = Spectre.Console.AnsiSupport.No,
            ColorSystem = Spectre.Console.ColorSystemSupport.NoColors,
        });
        console.Profile.Width = 120;
        console.Write(set.ToRenderable());
        Assert.Contains("madvise", sw.ToString());
        Assert.Contains("750.0", sw.ToString());
    }
}
