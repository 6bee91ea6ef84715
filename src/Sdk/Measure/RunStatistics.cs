using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace VirtLab.Sdk.Measure;

/// <summary>A file <c>virtlab run --plots DIR</c> wrote: the chart's title, kind and path.</summary>
public sealed record PlotFile(string Title, PlotKind Kind, string Path);

/// <summary>
/// How one measure varied over repeated runs: count, median, min, max; <see cref="Range"/> = max − min is the spread
/// <c>virtlab compare</c> holds a difference against.
/// </summary>
public sealed record Spread(int N, double Median, double Min, double Max)
{
    /// <summary>Max − Min.</summary>
    public double Range => Max - Min;

    /// <summary>Range relative to the median (0.05 = the runs spread over 5 % of the median); 0 when the median is 0.</summary>
    public double Relative => Median != 0 ? Range / Math.Abs(Median) : 0;

    /// <exception cref="ArgumentException">No values.</exception>
    public static Spread Of(IEnumerable<double> values)
    {
        var v = (values ?? throw new ArgumentNullException(nameof(values))).Where(double.IsFinite).Order().ToArray();
        if (v.Length == 0) throw new ArgumentException("no finite values to summarize");
        var median = v.Length % 2 == 1 ? v[v.Length / 2] : (v[v.Length / 2 - 1] + v[v.Length / 2]) / 2;
        return new Spread(v.Length, median, v[0], v[^1]);
    }
}

/// <summary>What <c>virtlab run --repeat N --warmup K</c> adds to the run record: per stage and per numeric result,
/// the spread over the N measured repetitions, and every measured repetition's own record.</summary>
public sealed record RepeatSummary
{
    /// <summary>Number of runs summarised.</summary>
    public required int Repetitions { get; init; }
    /// <summary>Runs made first and discarded (not in <see cref="Runs"/>).</summary>
    public int Warmup { get; init; }
    /// <summary>Stage key (<see cref="RunMetrics.StageKey"/>) → seconds.</summary>
    public required IReadOnlyDictionary<string, Spread> Stages { get; init; }
    /// <summary>Numeric result (or "result.field") → value.</summary>
    public required IReadOnlyDictionary<string, Spread> Results { get; init; }
    /// <summary>The run records.</summary>
    public required IReadOnlyList<RunRecord> Runs { get; init; }

    /// <summary>Summarizes measured repetitions; a stage or result missing from some runs is summarized over the runs that have it.</summary>
    public static RepeatSummary Create(IReadOnlyList<RunRecord> runs, int warmup = 0)
    {
        ArgumentNullException.ThrowIfNull(runs);
        if (runs.Count == 0) throw new ArgumentException("no repetitions to summarize");
        return new RepeatSummary
        {
            Repetitions = runs.Count,
            Warmup = warmup,
            Stages = Summarize(runs.Select(RunMetrics.StageSeconds)),
            Results = Summarize(runs.Select(RunMetrics.NumericResults)),
            Runs = runs,
        };
    }

    private static IReadOnlyDictionary<string, Spread> Summarize(IEnumerable<IReadOnlyDictionary<string, double>> perRun)
    {
        var values = new Dictionary<string, List<double>>(StringComparer.Ordinal);
        var order = new List<string>();
        foreach (var run in perRun)
            foreach (var (k, v) in run)
            {
                if (!values.TryGetValue(k, out var list)) { values[k] = list = []; order.Add(k); }
                list.Add(v);
            }
        var result = new OrderedDictionary<string, Spread>(StringComparer.Ordinal);
        foreach (var k in order)
            if (values[k].Any(double.IsFinite)) result[k] = Spread.Of(values[k]);
        return result;
    }
}

/// <summary>The measures of one run record that repeat and compare work on: stage seconds and numeric results, by key.</summary>
public static class RunMetrics
{
    /// <summary>"name" for a top-level stage, "parent / name" for a nested one.</summary>
    public static string StageKey(StageRecord s) => s.Parent is null ? s.Name : $"{s.Parent} / {s.Name}";

    /// <summary>Seconds per stage path of one run.</summary>
    public static IReadOnlyDictionary<string, double> StageSeconds(RunRecord r)
    {
        ArgumentNullException.ThrowIfNull(r);
        var d = new OrderedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var s in r.Stages) d[StageKey(s)] = d.TryGetValue(StageKey(s), out var v) ? v + s.Seconds : s.Seconds;
        return d;
    }

    /// <summary>Results that are numbers (sizes are byte counts), and the numeric fields of results that are objects ("name.field").</summary>
    public static IReadOnlyDictionary<string, double> NumericResults(RunRecord r)
    {
        ArgumentNullException.ThrowIfNull(r);
        var d = new OrderedDictionary<string, double>(StringComparer.Ordinal);
        foreach (var (name, node) in r.Results)
        {
            if (Number(node) is { } v) d[name] = v;
            else if (node is JsonObject o)
                foreach (var (field, fnode) in o)
                    if (Number(fnode) is { } fv) d[$"{name}.{field}"] = fv;
        }
        return d;
    }

    private static double? Number(JsonNode? node)
    {
        if (node is not JsonValue v) return null;
        switch (v.GetValueKind())
        {
            case JsonValueKind.Number: // an int, long, double… node in memory, a JsonElement when parsed: the text reads as all
                return double.Parse(v.ToJsonString(), NumberStyles.Float, CultureInfo.InvariantCulture);
            case JsonValueKind.String when v.TryGetValue<string>(out var s) && s is "NaN" or "Infinity" or "-Infinity":
                return double.Parse(s!, CultureInfo.InvariantCulture);
            default:
                return null;
        }
    }
}
