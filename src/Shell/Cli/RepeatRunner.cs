using System.Diagnostics;
using System.Globalization;
using System.Text.Json.Nodes;
using Spectre.Console;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.Rendering;

namespace VirtLab.Shell.Cli;

/// <summary>
/// <c>virtlab run FILE --repeat N [--warmup K]</c>: K discarded warm-ups, then N measured repetitions, each a fresh
/// <c>virtlab run --json</c> process (no JIT, page cache or VM state carried from one to the next inside the shell).
/// Prints the median, min, max and spread of every stage and numeric result; the run record holds them and every
/// measured repetition's own record. A repetition that fails ends the series with its exit code.
/// </summary>
public static class RepeatRunner
{
    public static int Execute(RunOptions o, int repeat, int warmup)
    {
        var err = Console.Error;
        if (repeat < 1) { err.WriteLine($"virtlab run: --repeat must be at least 1; got {repeat}"); return ExitCodes.Usage; }
        if (warmup < 0) { err.WriteLine($"virtlab run: --warmup must be 0 or more; got {warmup}"); return ExitCodes.Usage; }
        if (o.JsonPath == "-") { err.WriteLine("virtlab run: --repeat writes its record to a file; give --json PATH"); return ExitCodes.Usage; }
        if (!File.Exists(o.File))
        {
            err.WriteLine(Directory.Exists(o.File) ? $"virtlab run: {o.File} is a folder; expected a recipe file (.csx)" : $"virtlab run: recipe not found: {o.File}");
            return ExitCodes.Usage;
        }
        var started = DateTimeOffset.UtcNow;
        var clock = Stopwatch.StartNew();
        var work = Directory.CreateTempSubdirectory("virtlab-repeat-").FullName;
        // Ctrl+C reaches the running child too (same process group): it cancels and exits 1, which ends the series
        // here. This process only has to stay alive for that and clean up.
        bool interrupted = false;
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; interrupted = true; };
        Console.CancelKeyPress += onCancel;
        using var terminal = TerminalProgress.InstallIfTerminal();
        err = Console.Error;
        using var series = VirtLab.Sdk.Measure.Progress.Start("repetitions", warmup + repeat, "runs");
        try
        {
            var runs = new List<RunRecord>();
            for (int i = 0; i < warmup + repeat; i++)
            {
                if (interrupted) { err.WriteLine("virtlab run: cancelled (Ctrl+C)"); return ExitCodes.Failure; }
                bool isWarmup = i < warmup;
                var label = isWarmup ? $"warm-up {i + 1}/{warmup}" : $"repetition {i - warmup + 1}/{repeat}";
                var json = Path.Combine(work, $"run-{i}.json");
                var plots = !isWarmup && o.PlotsDirectory is not null ? Path.Combine(o.PlotsDirectory, $"rep-{i - warmup + 1:00}") : null;
                var (code, seconds, stderr) = RunChild(o, json, plots);
                series.Advance();
                err.WriteLine($"{label}: exit {code} in {seconds.ToString("0.00", CultureInfo.InvariantCulture)} s");
                if (code != ExitCodes.Success)
                {
                    err.Write(stderr);
                    err.WriteLine($"virtlab run: {label} failed (exit {code}); the series stops there");
                    return code;
                }
                if (isWarmup) continue;
                try { runs.Add(RunRecord.Parse(File.ReadAllText(json))); }
                catch (Exception e) when (e is IOException or System.Text.Json.JsonException)
                {
                    err.WriteLine($"virtlab run: {label} wrote no readable run record ({e.Message})");
                    return ExitCodes.Failure;
                }
            }

            series.Dispose();
            var summary = RepeatSummary.Create(runs, warmup);
            Print(summary);
            var record = Combine(runs[0], summary, started, clock.Elapsed.TotalSeconds);
            if (o.PlotsDirectory is not null)
            {
                var files = new List<PlotFile>();
                foreach (var plot in SummaryPlots(summary))
                {
                    var path = PlotRenderer.PathFor(o.PlotsDirectory, files.Count + 1, plot, o.PlotFormat);
                    try { PlotRenderer.Save(plot, path); files.Add(new PlotFile(plot.Title, plot.Kind, path)); }
                    catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException) { err.WriteLine($"virtlab run: cannot draw plot '{plot.Title}': {e.Message}"); }
                }
                record = record with { Plots = files };
                err.WriteLine($"virtlab run: {files.Count} summary plot{(files.Count == 1 ? "" : "s")} written to {Path.GetFullPath(o.PlotsDirectory)} (each repetition's in rep-NN/)");
            }
            if (o.JsonPath is not null)
            {
                try { record.Write(o.JsonPath); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException)
                {
                    err.WriteLine($"virtlab run: cannot write the run record to {o.JsonPath}: {e.Message}");
                }
            }
            return ExitCodes.Success;
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
            try { Directory.Delete(work, recursive: true); } catch (IOException) { }
        }
    }

    /// <summary>The record of the series: the first repetition's recipe, arguments and environment; stages and numeric
    /// results replaced by their medians; <see cref="RunRecord.Repeat"/> with the spreads and every repetition.</summary>
    public static RunRecord Combine(RunRecord first, RepeatSummary summary, DateTimeOffset started, double seconds)
    {
        var stages = first.Stages.Select(s => summary.Stages.TryGetValue(RunMetrics.StageKey(s), out var sp) ? s with { Seconds = sp.Median } : s).ToList();
        var results = new Dictionary<string, JsonNode?>(StringComparer.Ordinal);
        foreach (var (k, v) in first.Results)
            results[k] = summary.Results.TryGetValue(k, out var sp) && v is JsonValue ? JsonValue.Create(sp.Median) : v?.DeepClone();
        return first with
        {
            Stages = stages,
            Results = results,
            ExitCode = ExitCodes.Success,
            Error = null,
            StartedAt = started,
            DurationSeconds = seconds,
            Plots = null,
            Repeat = summary,
        };
    }

    private static (int Code, double Seconds, string Stderr) RunChild(RunOptions o, string json, string? plots)
    {
        var psi = TestCommand.SelfStartInfo();
        psi.ArgumentList.Add("run");
        psi.ArgumentList.Add(o.File);
        psi.ArgumentList.Add("--json");
        psi.ArgumentList.Add(json);
        if (o.TestMode) psi.ArgumentList.Add("--test");
        if (o.NoCache) psi.ArgumentList.Add("--no-cache");
        foreach (var d in o.PluginDirectories) { psi.ArgumentList.Add("--plugins"); psi.ArgumentList.Add(d); }
        if (plots is not null) { psi.ArgumentList.Add("--plots"); psi.ArgumentList.Add(plots); psi.ArgumentList.Add("--plot-format"); psi.ArgumentList.Add(o.PlotFormat); }
        if (o.Arguments.Count > 0)
        {
            psi.ArgumentList.Add("--");
            foreach (var a in o.Arguments) psi.ArgumentList.Add(a);
        }
        // No time limit: a repetition runs as long as the recipe does; Ctrl+C ends it (and the series) through the child.
        var (code, seconds, stderr) = TestCommand.RunSelf(psi);
        return (code!.Value, seconds, stderr);
    }

    private static void Print(RepeatSummary s)
    {
        var console = Consoles.Out;
        var table = new Table().Border(TableBorder.Rounded)
            .Title(Markup.Escape($"{s.Repetitions} repetition{(s.Repetitions == 1 ? "" : "s")}{(s.Warmup > 0 ? $" after {s.Warmup} warm-up{(s.Warmup == 1 ? "" : "s")}" : "")}"));
        table.AddColumn("measure");
        foreach (var c in new[] { "median", "min", "max", "spread" }) table.AddColumn(new TableColumn(c).RightAligned());
        foreach (var (k, v) in s.Stages) table.AddRow(Row(k + " (ms)", v, 1000));
        foreach (var (k, v) in s.Results) table.AddRow(Row(k, v, 1));
        console.Write(table);
        console.WriteLine();
    }

    private static string[] Row(string name, Spread v, double scale) =>
        [Markup.Escape(name), Number(v.Median * scale), Number(v.Min * scale), Number(v.Max * scale), Percent(v.Relative)];

    public static string Number(double v) =>
        !double.IsFinite(v) ? v.ToString(CultureInfo.InvariantCulture) :
        Math.Abs(v) >= 1e6 ? v.ToString("#,0", CultureInfo.InvariantCulture) :
        Math.Abs(v) >= 100 ? v.ToString("#,0.#", CultureInfo.InvariantCulture) :
        Math.Abs(v) >= 1 ? v.ToString("0.###", CultureInfo.InvariantCulture) :
        v.ToString("0.######", CultureInfo.InvariantCulture);

    public static string Percent(double relative) => "±" + (relative * 50).ToString("0.0", CultureInfo.InvariantCulture) + " %";

    /// <summary>Stage medians with min–max bars, and each stage over the repetitions.</summary>
    public static IReadOnlyList<PlotRequest> SummaryPlots(RepeatSummary s)
    {
        var plots = new List<PlotRequest>();
        if (s.Stages.Count == 0) return plots;
        var keys = s.Stages.Keys.ToList();
        plots.Add(new PlotRequest
        {
            Title = $"stage times, median of {s.Repetitions} (bars: half the min-max range)", Kind = PlotKind.Bar, YLabel = "ms", Categories = keys,
            Series = [new PlotSeries("median", Enumerable.Range(0, keys.Count).Select(i => (double)i).ToArray(),
                keys.Select(k => s.Stages[k].Median * 1000).ToArray(), keys.Select(k => s.Stages[k].Range * 500).ToArray())],
        });
        plots.Add(new PlotRequest
        {
            Title = "stage times per repetition", XLabel = "repetition", YLabel = "ms",
            Series = keys.Select(k => PlotSeries.Of(k, s.Runs.Select(r => RunMetrics.StageSeconds(r).TryGetValue(k, out var v) ? v * 1000 : double.NaN))).ToArray(),
        });
        return plots;
    }
}
