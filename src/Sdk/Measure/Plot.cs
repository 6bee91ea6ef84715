using System.Collections;
using System.Globalization;
using System.Numerics;
using System.Reflection;
using System.Text;
using System.Text.Json.Serialization;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Measure;

/// <summary>How a plot draws its series.</summary>
public enum PlotKind
{
    /// <summary>One line per series, y over x.</summary>
    Line,
    /// <summary>Points only.</summary>
    Scatter,
    /// <summary>One bar per category (<see cref="PlotRequest.Categories"/>), one bar group per series.</summary>
    Bar,
    /// <summary><see cref="PlotRequest.Cells"/>: one row per iteration or slot, one column per page bin.</summary>
    Heatmap,
}

/// <summary>One named series of a chart; <see cref="X"/> and <see cref="Y"/> have the same length.</summary>
public sealed record PlotSeries
{
    /// <summary>A series: <paramref name="y"/> over <paramref name="x"/> (same length), with optional error bars.</summary>
    public PlotSeries(string label, IReadOnlyList<double> x, IReadOnlyList<double> y, IReadOnlyList<double>? error = null)
    {
        ArgumentNullException.ThrowIfNull(label);
        ArgumentNullException.ThrowIfNull(x);
        ArgumentNullException.ThrowIfNull(y);
        if (x.Count != y.Count) throw new ArgumentException($"series '{label}': {x.Count} x values but {y.Count} y values; they must pair up");
        if (error is not null && error.Count != y.Count) throw new ArgumentException($"series '{label}': {error.Count} error values for {y.Count} points");
        Label = label;
        X = x;
        Y = y;
        Error = error;
    }

    /// <summary>The legend label.</summary>
    public string Label { get; }
    /// <summary>X values.</summary>
    public IReadOnlyList<double> X { get; }
    /// <summary>Y values, one per X value.</summary>
    public IReadOnlyList<double> Y { get; }
    /// <summary>Half-height of an error bar per point (bar charts), e.g. the spread of repeated runs.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<double>? Error { get; }

    /// <summary>y over its index (0, 1, 2, …): an iteration series.</summary>
    public static PlotSeries Of(string label, IEnumerable<double> y)
    {
        var ys = (y ?? throw new ArgumentNullException(nameof(y))).ToArray();
        return new PlotSeries(label, Enumerable.Range(0, ys.Length).Select(i => (double)i).ToArray(), ys);
    }
}

/// <summary>
/// A chart a recipe asked for (<see cref="RecipeGlobals.Plot{T}(string, IEnumerable{T}, string?, string?)"/>) or the
/// shell derived from a run: data only. The shell renders it (PNG/SVG); the SDK never draws pixels. In the REPL it shows
/// as a sparkline per series, or a compact heatmap.
/// </summary>
public sealed record PlotRequest : IDisplayable
{
    /// <summary>The chart's title (also names its file).</summary>
    public required string Title { get; init; }
    /// <summary>Line, scatter, bars or heatmap.</summary>
    public PlotKind Kind { get; init; } = PlotKind.Line;
    /// <summary>X axis label.</summary>
    public string? XLabel { get; init; }
    /// <summary>Y axis label.</summary>
    public string? YLabel { get; init; }
    /// <summary>The data.</summary>
    public IReadOnlyList<PlotSeries> Series { get; init; } = [];
    /// <summary>Bar labels (x positions 0, 1, …) for <see cref="PlotKind.Bar"/>.</summary>
    public IReadOnlyList<string>? Categories { get; init; }
    /// <summary>Heatmap values, one row per list, each row the same length.</summary>
    public IReadOnlyList<IReadOnlyList<double>>? Cells { get; init; }
    /// <summary>x units per heatmap column (pages per bin), so the x axis reads in pages; null = 1.</summary>
    public double? ColumnWidth { get; init; }
    /// <summary>Row labels of a heatmap (e.g. "iteration 3", "slot 1").</summary>
    public IReadOnlyList<string>? RowLabels { get; init; }

    /// <summary>A file-name stem from the title: lower case, [a-z0-9-] only.</summary>
    public string Slug => MakeSlug(Title);

    /// <summary>A file name made of <paramref name="title"/>: lower case, letters and digits, dashes between.</summary>
    public static string MakeSlug(string title)
    {
        var sb = new StringBuilder();
        foreach (var c in title.ToLowerInvariant())
            if (c is >= 'a' and <= 'z' or >= '0' and <= '9') sb.Append(c);
            else if (sb.Length > 0 && sb[^1] != '-') sb.Append('-');
        var s = sb.ToString().Trim('-');
        return s.Length == 0 ? "plot" : s.Length > 80 ? s[..80].TrimEnd('-') : s;
    }

    /// <summary>Checks the shape: a title, series or cells as the kind needs, equal-length heatmap rows.</summary>
    public PlotRequest Validate()
    {
        if (string.IsNullOrWhiteSpace(Title)) throw new ArgumentException("a plot needs a title (it also names the file)");
        if (Kind == PlotKind.Heatmap)
        {
            if (Cells is null || Cells.Count == 0) throw new ArgumentException($"heatmap '{Title}': no rows");
            var w = Cells[0].Count;
            if (w == 0) throw new ArgumentException($"heatmap '{Title}': rows are empty");
            for (int r = 0; r < Cells.Count; r++)
                if (Cells[r].Count != w) throw new ArgumentException($"heatmap '{Title}': row {r} has {Cells[r].Count} cells, row 0 has {w}; rows must be equally long");
            if (RowLabels is not null && RowLabels.Count != Cells.Count) throw new ArgumentException($"heatmap '{Title}': {RowLabels.Count} row labels for {Cells.Count} rows");
            return this;
        }
        if (Series.Count == 0) throw new ArgumentException($"plot '{Title}': no series");
        if (Kind == PlotKind.Bar && Categories is { } cats)
            foreach (var s in Series)
                if (s.Y.Count != cats.Count) throw new ArgumentException($"bar chart '{Title}': series '{s.Label}' has {s.Y.Count} values for {cats.Count} categories");
        return this;
    }

    // ---- factories ----

    /// <summary>Lines of y over their index.</summary>
    public static PlotRequest Line(string title, IEnumerable<double> y, string? xLabel = null, string? yLabel = null) =>
        new PlotRequest { Title = title, Series = [PlotSeries.Of(title, y)], XLabel = xLabel, YLabel = yLabel }.Validate();

    /// <summary>One bar per (label, value).</summary>
    public static PlotRequest Bars(string title, IEnumerable<(string Label, double Value)> bars, string? yLabel = null)
    {
        var b = (bars ?? throw new ArgumentNullException(nameof(bars))).ToArray();
        return new PlotRequest
        {
            Title = title, Kind = PlotKind.Bar, YLabel = yLabel, Categories = b.Select(x => x.Label).ToArray(),
            Series = [PlotSeries.Of(title, b.Select(x => x.Value))],
        }.Validate();
    }

    /// <summary>The most columns a dirty-bitmap heatmap gets: pages are binned beyond that.</summary>
    public const int MaxHeatmapColumns = 1024;

    /// <summary>
    /// Dirty bitmaps as a heatmap: one row per bitmap (iteration or slot), page index binned to at most
    /// <paramref name="columns"/> columns, each cell the fraction of dirty pages in its bin (0 … 1).
    /// </summary>
    public static PlotRequest Heatmap(string title, IEnumerable<DirtyBitmap> bitmaps, IEnumerable<string>? rowLabels = null, int columns = MaxHeatmapColumns)
    {
        var rows = (bitmaps ?? throw new ArgumentNullException(nameof(bitmaps))).ToArray();
        if (rows.Length == 0) throw new ArgumentException($"heatmap '{title}': no bitmaps");
        if (columns < 1) throw new ArgumentOutOfRangeException(nameof(columns), $"columns must be at least 1; got {columns}");
        var pages = rows.Max(b => b.Pages);
        if (pages == 0) throw new ArgumentException($"heatmap '{title}': the bitmaps cover no pages");
        var cols = (int)Math.Min(columns, pages);
        var cells = rows.Select(b => (IReadOnlyList<double>)Bin(b, pages, cols)).ToArray();
        var labels = rowLabels?.ToArray() ?? Enumerable.Range(0, rows.Length).Select(i => i.ToString(CultureInfo.InvariantCulture)).ToArray();
        return new PlotRequest
        {
            Title = title, Kind = PlotKind.Heatmap, Cells = cells, RowLabels = labels, ColumnWidth = pages / (double)cols,
            XLabel = cols == pages ? "page" : $"page (bins of {pages / (double)cols:0.#} pages)", YLabel = "row",
        }.Validate();
    }

    /// <summary>Fraction of set pages in each of <paramref name="cols"/> equal bins of [0, <paramref name="pages"/>).</summary>
    public static double[] Bin(DirtyBitmap bitmap, long pages, int cols)
    {
        var cells = new double[cols];
        for (int c = 0; c < cols; c++)
        {
            long first = pages * c / cols, end = pages * (c + 1) / cols;
            long inBitmap = Math.Max(0, Math.Min(end, bitmap.Pages) - first);
            cells[c] = end > first && inBitmap > 0 ? bitmap.CountRange(first, inBitmap) / (double)(end - first) : 0;
        }
        return cells;
    }

    /// <summary>Stage times as horizontal bars (nested stages indented), in milliseconds.</summary>
    public static PlotRequest Stages(IReadOnlyList<StageRecord> stages, string title = "stage times")
    {
        ArgumentNullException.ThrowIfNull(stages);
        if (stages.Count == 0) throw new ArgumentException("no stages to plot");
        var depth = new Dictionary<string, int>();
        var labels = new List<string>();
        foreach (var s in stages)
        {
            var d = s.Parent is not null && depth.TryGetValue(s.Parent, out var pd) ? pd + 1 : 0;
            depth[s.Name] = d;
            labels.Add(new string(' ', 2 * d) + s.Name + (s.Runs > 1 ? $" ×{s.Runs}" : ""));
        }
        return new PlotRequest
        {
            Title = title, Kind = PlotKind.Bar, YLabel = "ms", Categories = labels,
            Series = [PlotSeries.Of("ms", stages.Select(s => s.Seconds * 1000))],
        }.Validate();
    }

    // ---- per-iteration series found in results ----

    /// <summary>
    /// The per-iteration series in a result value, one chart each: a sequence of numbers or times (times in ms) of at
    /// least two points; a property of the value that is such a sequence (<c>name.passTimes</c>); and a sequence of
    /// objects that each hold one (<c>name.perVcpu[].passTimes</c>, one line per element). What the shell's
    /// <c>--plots</c> draws for a run's results.
    /// </summary>
    public static IReadOnlyList<PlotRequest> SeriesIn(string name, object? value)
    {
        var found = new List<PlotRequest>();
        if (value is null || value is string || value is DirtyBitmap) return found;
        if (value is PlotRequest p) { found.Add(p); return found; }
        if (Numbers(value) is { } ys)
        {
            if (ys.Count >= 2) found.Add(new PlotRequest { Title = name, Series = [PlotSeries.Of(name, ys)], XLabel = "iteration", YLabel = UnitOf(value) });
            return found;
        }
        if (value is IEnumerable) return found;
        foreach (var prop in Props(value.GetType()))
        {
            var v = Get(prop, value);
            if (v is null || v is string) continue;
            var label = $"{name}.{JsonName(prop.Name)}";
            if (Numbers(v) is { } pys)
            {
                if (pys.Count >= 2) found.Add(new PlotRequest { Title = label, Series = [PlotSeries.Of(label, pys)], XLabel = "iteration", YLabel = UnitOf(v) });
            }
            else if (v is IEnumerable items)
            {
                var elements = items.Cast<object?>().Where(e => e is not null).Take(64).ToList();
                if (elements.Count == 0) continue;
                foreach (var inner in Props(elements[0]!.GetType()))
                {
                    var series = new List<PlotSeries>();
                    string? unit = null;
                    for (int i = 0; i < elements.Count; i++)
                    {
                        var iv = elements[i]!.GetType() == elements[0]!.GetType() ? Get(inner, elements[i]!) : null;
                        if (iv is string || Numbers(iv) is not { Count: >= 2 } nums) { series.Clear(); break; }
                        unit ??= UnitOf(iv);
                        series.Add(PlotSeries.Of($"{JsonName(prop.Name)}[{i}]", nums));
                    }
                    if (series.Count > 0)
                        found.Add(new PlotRequest
                        {
                            Title = $"{label}[].{JsonName(inner.Name)}", Series = series, XLabel = "iteration", YLabel = unit,
                        });
                }
            }
        }
        return found;
    }

    /// <summary>The values of a sequence of numbers or TimeSpans (as ms); null for anything else.</summary>
    private static List<double>? Numbers(object? value)
    {
        if (value is null or string || value is not IEnumerable seq) return null;
        var t = ElementType(value.GetType());
        if (t is null || !(IsNumeric(t) || t == typeof(TimeSpan) || t == typeof(Size))) return null;
        var list = new List<double>();
        foreach (var o in seq)
        {
            if (list.Count > 1_000_000) break;
            list.Add(o switch
            {
                TimeSpan ts => ts.TotalMilliseconds,
                Size s => s.Bytes,
                IConvertible c => c.ToDouble(CultureInfo.InvariantCulture),
                _ => double.NaN,
            });
        }
        return list;
    }

    private static string? UnitOf(object? value) =>
        value is not null && ElementType(value.GetType()) is { } t ? t == typeof(TimeSpan) ? "ms" : t == typeof(Size) ? "bytes" : null : null;

    private static bool IsNumeric(Type t) =>
        t.IsPrimitive && t != typeof(bool) && t != typeof(char) && t != typeof(nint) && t != typeof(nuint) || t == typeof(decimal);

    private static Type? ElementType(Type seqType) =>
        seqType.IsArray ? seqType.GetElementType() :
        seqType.GetInterfaces().Append(seqType).FirstOrDefault(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(IEnumerable<>))?.GetGenericArguments()[0];

    private static IEnumerable<PropertyInfo> Props(Type t) =>
        t.GetProperties(BindingFlags.Public | BindingFlags.Instance).Where(p => p.GetIndexParameters().Length == 0 && p.GetMethod is not null && p.Name != "EqualityContract");

    private static object? Get(PropertyInfo p, object o)
    {
        try { return p.GetValue(o); }
        catch (TargetInvocationException) { return null; }
    }

    private static string JsonName(string name) => name.Length == 0 ? name : char.ToLowerInvariant(name[0]) + name[1..];

    // ---- terminal view ----

    private const string Spark = "▁▂▃▄▅▆▇█";
    private const string Shades = " ░▒▓█";

    /// <inheritdoc/>
    public IRenderable ToRenderable()
    {
        var rows = new List<IRenderable> { new Markup($"[bold]{Markup.Escape(Title)}[/] [grey]({Kind.ToString().ToLowerInvariant()})[/]") };
        if (Kind == PlotKind.Heatmap && Cells is not null)
        {
            var lines = TerminalHeatmap(Cells, RowLabels, 64);
            foreach (var l in lines) rows.Add(new Text(l));
            rows.Add(new Markup("[grey]  ' ' clean  ░ ▒ ▓ █ more of the bin dirty[/]"));
        }
        else
        {
            var width = Series.Count == 0 ? 0 : Series.Max(s => s.Label.Length);
            foreach (var s in Series)
            {
                var finite = s.Y.Where(double.IsFinite).ToArray();
                var range = finite.Length == 0 ? "" : $"  min {Fmt(finite.Min())}  max {Fmt(finite.Max())}";
                rows.Add(new Text($"{s.Label.PadRight(width)}  {Sparkline(s.Y, 64)}{range}"));
            }
        }
        return new Rows(rows);
    }

    /// <inheritdoc/>
    public override string ToString() =>
        Kind == PlotKind.Heatmap ? $"{Title} (heatmap {Cells?.Count ?? 0}×{Cells?.FirstOrDefault()?.Count ?? 0})" : $"{Title} ({Kind.ToString().ToLowerInvariant()}, {Series.Count} series)";

    /// <summary>A one-line sparkline of <paramref name="y"/> re-binned (mean) to at most <paramref name="width"/> characters.</summary>
    public static string Sparkline(IReadOnlyList<double> y, int width)
    {
        if (y.Count == 0) return "";
        var cols = Math.Min(width, y.Count);
        var v = new double[cols];
        for (int c = 0; c < cols; c++)
        {
            int a = y.Count * c / cols, b = Math.Max(a + 1, y.Count * (c + 1) / cols);
            var part = Enumerable.Range(a, b - a).Select(i => y[i]).Where(double.IsFinite).ToArray();
            v[c] = part.Length == 0 ? double.NaN : part.Average();
        }
        var finite = v.Where(double.IsFinite).ToArray();
        if (finite.Length == 0) return new string(' ', cols);
        double lo = finite.Min(), hi = finite.Max();
        return new string(v.Select(x => !double.IsFinite(x) ? ' ' : hi == lo ? Spark[3] : Spark[(int)Math.Round((x - lo) / (hi - lo) * (Spark.Length - 1))]).ToArray());
    }

    /// <summary>Rows of shade characters (' ' 0 … '█' 1), cells re-binned (max) to at most <paramref name="width"/> columns.</summary>
    public static IReadOnlyList<string> TerminalHeatmap(IReadOnlyList<IReadOnlyList<double>> cells, IReadOnlyList<string>? rowLabels, int width)
    {
        var labelWidth = rowLabels is null ? 0 : rowLabels.Max(l => l.Length);
        var lines = new List<string>();
        for (int r = 0; r < cells.Count; r++)
        {
            var row = cells[r];
            var cols = Math.Min(width, row.Count);
            var sb = new StringBuilder();
            if (rowLabels is not null) sb.Append(rowLabels[r].PadLeft(labelWidth)).Append(' ');
            sb.Append('│');
            for (int c = 0; c < cols; c++)
            {
                int a = row.Count * c / cols, b = Math.Max(a + 1, row.Count * (c + 1) / cols);
                double m = 0;
                for (int i = a; i < b; i++) if (double.IsFinite(row[i])) m = Math.Max(m, row[i]);
                sb.Append(m <= 0 ? Shades[0] : Shades[Math.Clamp((int)Math.Ceiling(m * (Shades.Length - 1)), 1, Shades.Length - 1)]);
            }
            lines.Add(sb.Append('│').ToString());
        }
        return lines;
    }

    private static string Fmt(double v) => v.ToString(Math.Abs(v) >= 1000 ? "#,0" : "0.###", CultureInfo.InvariantCulture);
}

/// <summary>The plots a run asked for, in order. <see cref="Added"/> lets the REPL render each one as it comes.</summary>
public sealed class PlotSet
{
    private readonly Lock _lock = new();
    private readonly List<PlotRequest> _plots = [];

    /// <summary>Called (on the recipe's thread) after a plot is added; the REPL host writes the image and tells where.</summary>
    public Action<PlotRequest>? Added { get; set; }

    /// <summary>The plots recorded so far.</summary>
    public IReadOnlyList<PlotRequest> All { get { lock (_lock) return _plots.ToArray(); } }

    /// <summary>Records <paramref name="plot"/> and returns it.</summary>
    public PlotRequest Add(PlotRequest plot)
    {
        ArgumentNullException.ThrowIfNull(plot);
        plot.Validate();
        lock (_lock) _plots.Add(plot);
        Added?.Invoke(plot);
        return plot;
    }

    internal static IReadOnlyList<double> ToDoubles<T>(IEnumerable<T> values) where T : INumberBase<T> =>
        (values ?? throw new ArgumentNullException(nameof(values))).Select(double.CreateTruncating).ToArray();
}
