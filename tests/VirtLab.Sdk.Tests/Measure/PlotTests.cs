using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

/// <summary>The data a recipe's Plot(...) hands to the shell's plotting layer.</summary>
public sealed class PlotTests
{
    [Fact]
    public void Plot_records_the_series_in_the_context()
    {
        var ctx = new RecipeContext { Log = null };
        var g = new RecipeGlobals(ctx);
        PlotRequest? seen = null;
        ctx.Plots.Added = p => seen = p;
        var p1 = g.Plot("get log us", new[] { 5, 7, 3 });
        var p2 = g.Plot("pass ms", new[] { TimeSpan.FromMilliseconds(1.5), TimeSpan.FromSeconds(2) });
        var p3 = g.Plot("rate by size", new[] { 1L, 2L, 4L }, new[] { 0.5, 1.0, 1.5 }, "MiB", "GiB/s");
        var p4 = g.Plot("two", PlotSeries.Of("get", [1, 2]), PlotSeries.Of("clear", [3, 4]));

        Assert.Equal([p1, p2, p3, p4], ctx.Plots.All);
        Assert.Same(p4, seen);
        Assert.Equal([0.0, 1, 2], p1.Series[0].X);
        Assert.Equal([5.0, 7, 3], p1.Series[0].Y);
        Assert.Equal([1.5, 2000], p2.Series[0].Y);
        Assert.Equal("ms", p2.YLabel);
        Assert.Equal([1.0, 2, 4], p3.Series[0].X);
        Assert.Equal([0.5, 1.0, 1.5], p3.Series[0].Y);
        Assert.Equal(("MiB", "GiB/s"), (p3.XLabel, p3.YLabel));
        Assert.Equal(["get", "clear"], p4.Series.Select(s => s.Label));
        Assert.Equal("rate-by-size", p3.Slug);
    }

    [Fact]
    public void Bad_plots_are_refused_with_the_reason()
    {
        var g = new RecipeGlobals(new RecipeContext { Log = null });
        Assert.Contains("2 x values but 3 y values", Assert.Throws<ArgumentException>(() => new PlotSeries("s", [1, 2], [1, 2, 3])).Message);
        Assert.Contains("needs a title", Assert.Throws<ArgumentException>(() => g.Plot(" ", new[] { 1.0 })).Message);
        Assert.Contains("no series", Assert.Throws<ArgumentException>(() => g.Plot("empty")).Message);
        Assert.Contains("no bitmaps", Assert.Throws<ArgumentException>(() => g.Plot("hm", Array.Empty<DirtyBitmap>())).Message);
        var ragged = new PlotRequest { Title = "r", Kind = PlotKind.Heatmap, Cells = [[1, 0], [1]] };
        Assert.Contains("row 1 has 1 cells, row 0 has 2", Assert.Throws<ArgumentException>(() => g.Plot(ragged)).Message);
        Assert.Empty(g.Context.Plots.All);
    }

    [Fact]
    public void Dirty_bitmaps_become_heatmap_rows_of_dirty_fractions()
    {
        // 256 pages in 4 bins of 64: row 0 has bin 0 all dirty and half of bin 3; row 1 only page 100.
        var a = new DirtyBitmap(256);
        a.SetRange(0, 64);
        a.SetRange(192, 32);
        var b = new DirtyBitmap(256);
        b.Set(100);
        var hm = PlotRequest.Heatmap("dirty", [a, b], ["iteration 0", "iteration 1"], columns: 4);
        Assert.Equal(PlotKind.Heatmap, hm.Kind);
        Assert.Equal([1.0, 0, 0, 0.5], hm.Cells![0]);
        Assert.Equal([0.0, 1 / 64.0, 0, 0], hm.Cells[1]);
        Assert.Equal(["iteration 0", "iteration 1"], hm.RowLabels);
        Assert.Contains("bins of 64 pages", hm.XLabel);
        Assert.Equal(64, hm.ColumnWidth);

        // Fewer pages than columns: one column per page, exact bits.
        var small = PlotRequest.Heatmap("small", [DirtyBitmap.FromPages(5, [1, 4])]);
        Assert.Equal([0.0, 1, 0, 0, 1], small.Cells![0]);

        // The terminal view: one row per bitmap, shade by fraction.
        var lines = PlotRequest.TerminalHeatmap(hm.Cells, hm.RowLabels, 64);
        Assert.Equal(["iteration 0 │█  ▒│", "iteration 1 │ ░  │"], lines);
    }

    [Fact]
    public void Stage_chart_has_one_bar_per_stage_in_ms()
    {
        var set = new StageSet();
        set.Record("create", TimeSpan.FromMilliseconds(20));
        using (set.Start("outer")) set.Record("inner", TimeSpan.FromMilliseconds(5));
        var p = PlotRequest.Stages(set.Records);
        Assert.Equal(PlotKind.Bar, p.Kind);
        Assert.Equal(["create", "outer", "  inner"], p.Categories);
        Assert.Equal(20, p.Series[0].Y[0], 6);
        Assert.Equal(5, p.Series[0].Y[2], 6);
    }

    private sealed record Vcpu(int Index, IReadOnlyList<TimeSpan> PassTimes);
    private sealed record Result(string Name, IReadOnlyList<TimeSpan> PassTimes, IReadOnlyList<Vcpu> PerVcpu, long Count);

    [Fact]
    public void Per_iteration_series_are_found_in_results()
    {
        static TimeSpan Ms(double v) => TimeSpan.FromMilliseconds(v);
        var r = new Result("w", [Ms(10), Ms(3)], [new Vcpu(0, [Ms(9), Ms(2)]), new Vcpu(1, [Ms(10), Ms(3)])], 42);
        var found = PlotRequest.SeriesIn("run", r);
        Assert.Equal(["run.passTimes", "run.perVcpu[].passTimes"], found.Select(p => p.Title));
        Assert.Equal([10.0, 3], found[0].Series[0].Y);
        Assert.Equal("ms", found[0].YLabel);
        Assert.Equal(["perVcpu[0]", "perVcpu[1]"], found[1].Series.Select(s => s.Label));
        Assert.Equal([9.0, 2], found[1].Series[0].Y);
        Assert.Equal([10.0, 3], found[1].Series[1].Y);

        Assert.Equal([1.0, 2, 4], Assert.Single(PlotRequest.SeriesIn("xs", new List<int> { 1, 2, 4 })).Series[0].Y);
        Assert.Empty(PlotRequest.SeriesIn("one", new[] { 1.0 }));        // a single point is no series
        Assert.Empty(PlotRequest.SeriesIn("scalar", 3.5));
        Assert.Empty(PlotRequest.SeriesIn("text", "abc"));
    }

    [Fact]
    public void Sparkline_spans_the_range()
    {
        Assert.Equal("▁▅█", PlotRequest.Sparkline([0, 5, 10], 64));
        Assert.Equal(2, PlotRequest.Sparkline(Enumerable.Range(0, 100).Select(i => (double)i).ToArray(), 2).Length);
    }
}
