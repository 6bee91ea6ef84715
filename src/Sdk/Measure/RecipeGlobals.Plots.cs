using System.Numerics;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Measure;

// Plot(...): recipes and the REPL record charts as data; the shell draws them (virtlab run --plots DIR writes
// PNG/SVG files; the REPL writes a PNG and shows a sparkline or a compact heatmap).
public partial class RecipeGlobals
{
    /// <summary>A line chart of <paramref name="y"/> over its index (iterations, passes): <c>Plot("get-log µs", times)</c>.</summary>
    public PlotRequest Plot<T>(string title, IEnumerable<T> y, string? xLabel = "iteration", string? yLabel = null) where T : INumberBase<T> =>
        Context.Plots.Add(new PlotRequest { Title = title, Series = [PlotSeries.Of(title, PlotSet.ToDoubles(y))], XLabel = xLabel, YLabel = yLabel });

    /// <summary>A line chart of times in milliseconds over their index.</summary>
    public PlotRequest Plot(string title, IEnumerable<TimeSpan> y, string? xLabel = "iteration") =>
        Context.Plots.Add(new PlotRequest { Title = title, Series = [PlotSeries.Of(title, y.Select(t => t.TotalMilliseconds))], XLabel = xLabel, YLabel = "ms" });

    /// <summary>y over x: <c>Plot("rate by size", sizes, rates, "MiB", "GiB/s")</c>.</summary>
    public PlotRequest Plot<TX, TY>(string title, IEnumerable<TX> x, IEnumerable<TY> y, string? xLabel = null, string? yLabel = null)
        where TX : INumberBase<TX> where TY : INumberBase<TY> =>
        Context.Plots.Add(new PlotRequest { Title = title, Series = [new PlotSeries(title, PlotSet.ToDoubles(x), PlotSet.ToDoubles(y))], XLabel = xLabel, YLabel = yLabel });

    /// <summary>Several series on one chart: <c>Plot("dirty log", PlotSeries.Of("get", g), PlotSeries.Of("clear", c))</c>.</summary>
    public PlotRequest Plot(string title, params PlotSeries[] series) =>
        Context.Plots.Add(new PlotRequest { Title = title, Series = series, XLabel = "iteration" });

    /// <summary>Dirty bitmaps as a heatmap, one row per bitmap (iteration or slot), pages binned to at most 1024 columns.</summary>
    public PlotRequest Plot(string title, IEnumerable<DirtyBitmap> bitmaps, IEnumerable<string>? rowLabels = null) =>
        Context.Plots.Add(PlotRequest.Heatmap(title, bitmaps, rowLabels));

    /// <summary>Any chart built with <see cref="PlotRequest"/>'s factories or initializer.</summary>
    public PlotRequest Plot(PlotRequest plot) => Context.Plots.Add(plot);
}
