using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Spectre.Console;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.Rendering;

namespace VirtLab.Shell.Cli;

/// <summary>
/// <c>virtlab compare A.json B.json [C.json …]</c>: run records side by side. First what differs in the environment
/// (kernel, KVM parameters, CPU, SDK and plugin versions, recipe hash, arguments), then every stage and numeric result
/// with its ratio to the first record. A ratio is marked <c>*</c> when the difference of the medians exceeds the
/// larger min–max range of the two (from <c>--repeat</c>), and <c>?</c> when either side is a single run, which has no
/// spread to judge by. Exit 0; 3 for a file that is not a run record or records of different recipes (unless --force).
/// </summary>
public static class CompareCommand
{
    public sealed record Loaded(string Path, RunRecord Record);

    /// <summary>One measure across the records: per record its value (null = absent) and spread (null = single run).</summary>
    public sealed record Row(string Name, string Unit, IReadOnlyList<double?> Values, IReadOnlyList<Spread?> Spreads)
    {
        /// <summary>Value ÷ the first record's value, per record (null when either is absent or the first is 0).</summary>
        public double? Ratio(int i) => Values[0] is { } a && Values[i] is { } b && a != 0 ? b / a : null;

        /// <summary>True when |median_i − median_0| is larger than the larger of the two min–max ranges.</summary>
        public bool BeyondSpread(int i) =>
            Values[0] is { } a && Values[i] is { } b && Spreads[0] is { } s0 && Spreads[i] is { } si && Math.Abs(b - a) > Math.Max(s0.Range, si.Range);

        public bool SingleRun(int i) => Spreads[0] is null || Spreads[i] is null;
    }

    public static int Execute(IReadOnlyList<string> files, bool force, string? plotPath)
    {
        var err = Console.Error;
        if (files.Count < 2) { err.WriteLine($"virtlab compare: needs at least two run records (virtlab run --json PATH); got {files.Count}"); return ExitCodes.Usage; }
        if (plotPath is not null && Path.GetExtension(plotPath).ToLowerInvariant() is not (".png" or ".svg"))
        {
            err.WriteLine($"virtlab compare: --plot {plotPath}: the file name must end in .png or .svg (it picks the format)");
            return ExitCodes.Usage;
        }
        var loaded = new List<Loaded>();
        foreach (var f in files)
        {
            var (record, problem) = Load(f);
            if (record is null) { err.WriteLine($"virtlab compare: {f}: {problem}"); return ExitCodes.Usage; }
            loaded.Add(new Loaded(f, record));
        }
        var names = loaded.Select(l => RecipeName(l.Record)).Distinct(StringComparer.Ordinal).ToList();
        if (names.Count > 1 && !force)
        {
            err.WriteLine($"virtlab compare: the records come from different recipes ({string.Join(", ", loaded.Select(l => $"{l.Path}: {RecipeName(l.Record)}"))}); " +
                          "comparing their stages means little. Pass --force to compare them anyway.");
            return ExitCodes.Usage;
        }

        var console = Consoles.Out;
        var heads = Headers(loaded);
        console.Write(new Markup($"[bold]comparing {loaded.Count} runs of {Markup.Escape(string.Join(" / ", names))}[/]\n"));
        for (int i = 0; i < loaded.Count; i++)
            console.WriteLine($"  {heads[i]} = {loaded[i].Path}: {Describe(loaded[i].Record)}");
        console.WriteLine();

        var env = EnvironmentDifferences(loaded.Select(l => l.Record).ToList());
        if (env.Count == 0) console.WriteLine("environment: the same in every record");
        else
        {
            var t = new Table().Border(TableBorder.Rounded).Title("environment differences").AddColumn("what");
            foreach (var h in heads) t.AddColumn(Markup.Escape(h));
            foreach (var (key, values) in env) t.AddRow([new Text(key), .. values.Select(v => new Text(v ?? "—"))]);
            console.Write(t);
        }

        var rows = Rows(loaded.Select(l => l.Record).ToList());
        if (rows.Count == 0) console.WriteLine("no stages or numeric results to compare");
        else
        {
            var t = new Table().Border(TableBorder.Rounded).Title("stages and results (ratio to the first)").AddColumn("measure");
            t.AddColumn(new TableColumn(Markup.Escape(heads[0])).RightAligned());
            foreach (var h in heads.Skip(1)) t.AddColumn(new TableColumn(Markup.Escape(h)).RightAligned());
            foreach (var r in rows)
            {
                var cells = new List<string> { Markup.Escape(r.Name + (r.Unit.Length > 0 ? $" ({r.Unit})" : "")), Markup.Escape(Cell(r, 0)) };
                for (int i = 1; i < loaded.Count; i++) cells.Add(Markup.Escape(Cell(r, i)));
                t.AddRow(cells.ToArray());
            }
            console.Write(t);
            console.WriteLine("* the difference exceeds the min–max spread of the repeated runs; ? single run: no spread to judge by (use --repeat N)");
        }

        if (plotPath is not null && rows.Count > 0)
        {
            try
            {
                PlotRenderer.Save(ComparisonPlot(rows, heads), plotPath);
                err.WriteLine($"virtlab compare: chart written to {Path.GetFullPath(plotPath)}");
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
            {
                err.WriteLine($"virtlab compare: cannot write {plotPath}: {e.Message}");
                return ExitCodes.Failure;
            }
        }
        return ExitCodes.Success;
    }

    /// <summary>Reads a run record; null and why when the file is missing, not JSON, or JSON of something else.</summary>
    public static (RunRecord? Record, string? Problem) Load(string path)
    {
        if (!File.Exists(path)) return (null, Directory.Exists(path) ? "is a folder, not a run record" : "no such file");
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return (null, $"cannot read it: {e.Message}"); }
        JsonNode? node;
        try { node = JsonNode.Parse(text); }
        catch (JsonException e) { return (null, $"not a run record: not JSON ({e.Message})"); }
        if (node is not JsonObject o || o["recipe"] is not JsonObject recipe || recipe["sha256"] is null || o["environment"] is not JsonObject || o["stages"] is not JsonArray)
            return (null, "not a run record: it lacks recipe.sha256, environment and stages (write one with virtlab run FILE --json PATH)");
        try { return (RunRecord.Parse(text), null); }
        catch (Exception e) when (e is JsonException or NotSupportedException or InvalidOperationException)
        {
            return (null, $"not a readable run record: {e.Message}");
        }
    }

    public static string RecipeName(RunRecord r) => Path.GetFileName(r.Recipe.Path);

    private static string Describe(RunRecord r) =>
        $"{r.StartedAt.UtcDateTime:yyyy-MM-dd HH:mm} UTC, exit {r.ExitCode}" +
        (r.Repeat is { } rep ? $", {rep.Repetitions} repetitions" + (rep.Warmup > 0 ? $" after {rep.Warmup} warm-up{(rep.Warmup == 1 ? "" : "s")}" : "") : ", single run");

    /// <summary>Column heads: A, B, C, …</summary>
    private static List<string> Headers(IReadOnlyList<Loaded> loaded) =>
        loaded.Select((_, i) => i < 26 ? ((char)('A' + i)).ToString() : $"R{i + 1}").ToList();

    /// <summary>
    /// Every environment field, recipe field (hash) and argument whose value is not the same in every record, flattened to
    /// dotted keys ("environment.kernel", "environment.kvmParameters.tdp_mmu", "args.memory"), in record order.
    /// </summary>
    public static IReadOnlyList<(string Key, IReadOnlyList<string?> Values)> EnvironmentDifferences(IReadOnlyList<RunRecord> records)
    {
        var flat = records.Select(r =>
        {
            var d = new Dictionary<string, string?>(StringComparer.Ordinal);
            var env = JsonSerializer.SerializeToNode(r.Environment, RunRecord.JsonOptions);
            Flatten("environment", env, d);
            d["recipe.sha256"] = r.Recipe.Sha256;
            foreach (var (k, v) in r.Args) d[$"args.{k}"] = v;
            d["testMode"] = r.TestMode ? "true" : "false";
            return d;
        }).ToList();
        var keys = new List<string>();
        foreach (var d in flat) foreach (var k in d.Keys) if (!keys.Contains(k)) keys.Add(k);
        var result = new List<(string, IReadOnlyList<string?>)>();
        foreach (var k in keys)
        {
            var values = flat.Select(d => d.TryGetValue(k, out var v) ? v : null).ToList();
            if (values.Distinct().Count() > 1) result.Add((k, values));
        }
        return result;
    }

    private static void Flatten(string prefix, JsonNode? node, Dictionary<string, string?> into)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var (k, v) in o) Flatten($"{prefix}.{k}", v, into);
                break;
            case JsonArray a:
                into[prefix] = a.ToJsonString();
                break;
            case null:
                into[prefix] = null;
                break;
            default:
                into[prefix] = node.GetValueKind() == JsonValueKind.String ? node.GetValue<string>() : node.ToJsonString();
                break;
        }
    }

    /// <summary>Stages (ms) then numeric results, each with a value and spread per record; order of first appearance.</summary>
    public static IReadOnlyList<Row> Rows(IReadOnlyList<RunRecord> records)
    {
        var rows = new List<Row>();
        Collect(rows, records, r => r.Repeat?.Stages, RunMetrics.StageSeconds, "ms", 1000);
        Collect(rows, records, r => r.Repeat?.Results, RunMetrics.NumericResults, "", 1);
        return rows;
    }

    private static void Collect(List<Row> rows, IReadOnlyList<RunRecord> records, Func<RunRecord, IReadOnlyDictionary<string, Spread>?> spreads,
        Func<RunRecord, IReadOnlyDictionary<string, double>> single, string unit, double scale)
    {
        var keys = new List<string>();
        var perRecord = records.Select(r => (Spreads: spreads(r), Values: single(r))).ToList();
        foreach (var p in perRecord)
            foreach (var k in (p.Spreads?.Keys ?? []).Concat(p.Values.Keys))
                if (!keys.Contains(k)) keys.Add(k);
        foreach (var k in keys)
        {
            var values = new List<double?>();
            var sp = new List<Spread?>();
            foreach (var p in perRecord)
            {
                if (p.Spreads is not null && p.Spreads.TryGetValue(k, out var s) && s.N > 1)
                {
                    values.Add(s.Median * scale);
                    sp.Add(new Spread(s.N, s.Median * scale, s.Min * scale, s.Max * scale));
                }
                else
                {
                    values.Add(p.Values.TryGetValue(k, out var v) ? v * scale : null);
                    sp.Add(null);
                }
            }
            rows.Add(new Row(k, unit, values, sp));
        }
    }

    private static string Cell(Row r, int i)
    {
        if (r.Values[i] is not { } v) return "—";
        var text = RepeatRunner.Number(v);
        if (r.Spreads[i] is { } s) text += " " + RepeatRunner.Percent(s.Relative);
        if (i == 0) return text;
        if (r.Ratio(i) is not { } ratio) return text;
        var mark = r.SingleRun(i) ? "?" : r.BeyondSpread(i) ? "*" : "";
        return $"{text}  ×{ratio.ToString(ratio >= 10 ? "0.0" : "0.000", CultureInfo.InvariantCulture)}{mark}";
    }

    /// <summary>Grouped bars: each measure's value relative to the first record (1 = the same), with the spread as error bars.</summary>
    public static PlotRequest ComparisonPlot(IReadOnlyList<Row> rows, IReadOnlyList<string> heads)
    {
        var usable = rows.Where(r => r.Values[0] is { } a && a != 0).ToList();
        if (usable.Count == 0) throw new ArgumentException("no measure has a non-zero value in the first record to compare against");
        var series = new List<PlotSeries>();
        for (int i = 0; i < heads.Count; i++)
        {
            var x = usable.Select((_, j) => (double)j).ToArray();
            var y = usable.Select(r => r.Values[i] is { } v ? v / r.Values[0]!.Value : double.NaN).ToArray();
            var e = usable.Select(r => r.Spreads[i] is { } s ? s.Range / 2 / r.Values[0]!.Value : 0).ToArray();
            series.Add(new PlotSeries(heads[i], x, y, e));
        }
        return new PlotRequest
        {
            Title = "ratio to the first record", Kind = PlotKind.Bar, YLabel = "ratio to A",
            Categories = usable.Select(r => r.Name).ToArray(), Series = series,
        }.Validate();
    }
}
