using ScottPlot;
using VirtLab.Sdk.Measure;

namespace VirtLab.Shell.Rendering;

/// <summary>
/// Draws <see cref="PlotRequest"/>s with ScottPlot (SkiaSharp, no display needed) as PNG or SVG: the only place that
/// knows about pixels. What <c>virtlab run --plots DIR</c> writes for a run is chosen by <see cref="ForRun"/>.
/// </summary>
public static class PlotRenderer
{
    public const int Width = 1000, Height = 560;

    /// <summary>The charts of a finished run: stage times, one per per-iteration series in its results, then every Plot the recipe made.</summary>
    public static IReadOnlyList<PlotRequest> ForRun(RecipeContext context)
    {
        var plots = new List<PlotRequest>();
        var stages = context.Stages.Records;
        if (stages.Count > 0) plots.Add(PlotRequest.Stages(stages));
        foreach (var r in context.Results)
            plots.AddRange(PlotRequest.SeriesIn(r.Name, r.Value));
        plots.AddRange(context.Plots.All);
        return plots;
    }

    /// <summary>Writes each plot to <paramref name="directory"/> as <c>NN-slug.format</c> (numbered: titles may repeat).</summary>
    public static IReadOnlyList<PlotFile> WriteAll(IReadOnlyList<PlotRequest> plots, string directory, string format)
    {
        Directory.CreateDirectory(directory);
        var files = new List<PlotFile>();
        for (int i = 0; i < plots.Count; i++)
        {
            var path = PathFor(directory, i + 1, plots[i], format);
            Save(plots[i], path);
            files.Add(new PlotFile(plots[i].Title, plots[i].Kind, path));
        }
        return files;
    }

    /// <summary>"DIR/NN-slug.format" (numbered: titles may repeat), full path.</summary>
    public static string PathFor(string directory, int number, PlotRequest plot, string format) =>
        Path.GetFullPath(Path.Combine(directory, $"{number:00}-{plot.Slug}.{format}"));

    /// <summary>Renders to <paramref name="path"/>; the extension (.png or .svg) picks the format.</summary>
    /// <exception cref="ArgumentException">Another extension.</exception>
    public static void Save(PlotRequest request, string path)
    {
        var ext = Path.GetExtension(path).ToLowerInvariant();
        if (ext is not (".png" or ".svg"))
            throw new ArgumentException($"plot file '{path}': the extension must be .png or .svg (it picks the format); got '{ext}'");
        var plot = Build(request, out var width, out var height);
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        if (ext == ".png") plot.SavePng(full, width, height);
        else plot.SaveSvg(full, width, height);
    }

    /// <summary>The ScottPlot chart for a request, and the pixel size it wants.</summary>
    public static Plot Build(PlotRequest request, out int width, out int height)
    {
        request.Validate();
        var plot = new Plot();
        plot.Title(request.Title);
        if (request.XLabel is not null) plot.XLabel(request.XLabel);
        if (request.YLabel is not null) plot.YLabel(request.YLabel);
        width = Width;
        height = Height;
        switch (request.Kind)
        {
            case PlotKind.Heatmap:
                BuildHeatmap(plot, request, ref height);
                break;
            case PlotKind.Bar:
                BuildBars(plot, request, ref height);
                break;
            default:
                foreach (var s in request.Series)
                {
                    var sc = plot.Add.Scatter(s.X.ToArray(), s.Y.ToArray());
                    if (request.Series.Count > 1) sc.LegendText = s.Label;
                    if (request.Kind == PlotKind.Scatter) sc.LineWidth = 0;
                    else if (s.X.Count > 200) sc.MarkerSize = 0;
                }
                if (request.Series.Count > 1) plot.ShowLegend();
                break;
        }
        return plot;
    }

    private static void BuildBars(Plot plot, PlotRequest request, ref int height)
    {
        var n = request.Series[0].Y.Count;
        var labels = request.Categories ?? Enumerable.Range(0, n).Select(i => i.ToString()).ToList();
        int groups = request.Series.Count;
        // Many categories (stage tables): horizontal bars, labels on the left, read top to bottom.
        bool horizontal = labels.Count > 6 || labels.Any(l => l.Length > 12);
        double slot = 0.8 / groups;
        var palette = new ScottPlot.Palettes.Category10();
        var bars = new List<Bar>();
        for (int g = 0; g < groups; g++)
        {
            var s = request.Series[g];
            for (int i = 0; i < s.Y.Count; i++)
            {
                // Category i sits at position i (top to bottom when horizontal: negate).
                double centre = horizontal ? -i : i;
                double offset = (g - (groups - 1) / 2.0) * slot * (horizontal ? -1 : 1);
                bars.Add(new Bar
                {
                    Position = centre + offset,
                    Value = double.IsFinite(s.Y[i]) ? s.Y[i] : 0,
                    Error = s.Error is { } e && double.IsFinite(e[i]) ? e[i] : 0,
                    Size = slot * 0.95,
                    FillColor = palette.GetColor(g),
                    Orientation = horizontal ? Orientation.Horizontal : Orientation.Vertical,
                });
            }
            if (groups > 1) plot.Legend.ManualItems.Add(new LegendItem { LabelText = s.Label, FillColor = palette.GetColor(g) });
        }
        plot.Add.Bars(bars);
        var ticks = labels.Select((l, i) => new Tick(horizontal ? -i : i, l)).ToArray();
        var axis = horizontal ? (IAxis)plot.Axes.Left : plot.Axes.Bottom;
        axis.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks);
        if (horizontal)
        {
            plot.Axes.Margins(left: 0, right: 0.1, bottom: 0.02, top: 0.02);
            plot.XLabel(request.YLabel ?? "");
            plot.YLabel("");
            height = Math.Clamp(120 + 28 * labels.Count * Math.Max(1, groups / 2), 300, 4000);
        }
        else plot.Axes.Margins(bottom: 0);
        if (groups > 1) plot.ShowLegend();
    }

    private static void BuildHeatmap(Plot plot, PlotRequest request, ref int height)
    {
        var cells = request.Cells!;
        var data = new double[cells.Count, cells[0].Count];
        for (int r = 0; r < cells.Count; r++)
            for (int c = 0; c < cells[r].Count; c++)
                data[r, c] = cells[r][c];
        var hm = plot.Add.Heatmap(data);
        hm.Colormap = new ScottPlot.Colormaps.Viridis();
        // Fractions (dirty share of a bin) keep a fixed 0 … 1 scale, so an all-dirty row is bright, not the scale's bottom.
        var all = cells.SelectMany(r => r).Where(double.IsFinite).ToArray();
        if (all.Length > 0 && all.Min() >= 0 && all.Max() <= 1) hm.ManualRange = new ScottPlot.Range(0, 1);
        plot.Add.ColorBar(hm);
        // x in pages (columns × pages per bin); y from 0 to rows, row 0 on top.
        hm.Rectangle = new CoordinateRect(left: 0, right: cells[0].Count * (request.ColumnWidth ?? 1), bottom: 0, top: cells.Count);
        if (request.RowLabels is { } labels && labels.Count <= 40)
        {
            var ticks = labels.Select((l, r) => new Tick(cells.Count - r - 0.5, l)).ToArray();
            plot.Axes.Left.TickGenerator = new ScottPlot.TickGenerators.NumericManual(ticks);
        }
        height = Math.Clamp(160 + 18 * cells.Count, 260, 2000);
    }
}
