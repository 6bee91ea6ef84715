using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.Tests.Terminal;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>The real `virtlab` process: run --plots, run --repeat, compare, and the live progress bar.</summary>
public sealed class ResultsCommandTests
{
    [Fact]
    public void Run_with_plots_writes_the_charts_and_lists_them_in_the_record()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("p.csx", """
            Stage("setup", () => Thread.Sleep(1));
            Result("latencyUs", new[] { 3.0, 4.0, 5.0 });
            Plot("custom", new[] { 1, 4, 9 });
            var bm = new DirtyBitmap(128); bm.SetRange(0, 64);
            Plot("dirty", new[] { bm });
            """);
        var dir = Path.Combine(tmp.Path, "plots");
        var json = Path.Combine(tmp.Path, "r.json");
        var r = Virtlab.Run(null, tmp.Path, "run", recipe, "--plots", dir, "--plot-format", "svg", "--json", json);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains($"4 plots written to {dir}", r.Stderr);
        var record = RunRecord.Parse(File.ReadAllText(json));
        Assert.Equal(["stage times", "latencyUs", "custom", "dirty"], record.Plots!.Select(p => p.Title));
        Assert.Equal([PlotKind.Bar, PlotKind.Line, PlotKind.Line, PlotKind.Heatmap], record.Plots!.Select(p => p.Kind));
        foreach (var p in record.Plots!)
        {
            Assert.StartsWith(dir, p.Path);
            Assert.EndsWith(".svg", p.Path);
            Assert.True(new FileInfo(p.Path).Length > 5_000, p.Path);
        }
        var bad = Virtlab.Run(null, tmp.Path, "run", recipe, "--plots", dir, "--plot-format", "gif");
        Assert.True(bad.ExitCode == 3, bad.ToString());
        Assert.Contains("gif", bad.Stderr);
    }

    [Fact]
    public void Repeat_runs_fresh_processes_and_records_every_repetition_with_statistics()
    {
        using var tmp = new TempDir();
        // Each process appends its pid to a file: the n-th run sees n lines, so the values are known: warm-up 1, then 2, 3.
        var counter = Path.Combine(tmp.Path, "count.txt");
        var recipe = tmp.File("rep.csx", $$"""
            File.AppendAllText(@"{{counter}}", Environment.ProcessId + "\n");
            var n = File.ReadAllLines(@"{{counter}}").Length;
            Stage("work", () => Thread.Sleep(1));
            Result("n", n * 10);
            Result("label", "text is not a measure");
            """);
        var json = Path.Combine(tmp.Path, "rep.json");
        var r = RunSeries(tmp.Path, "run", recipe, "--repeat", "2", "--warmup", "1", "--json", json);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("warm-up 1/1: exit 0", r.Stderr);
        Assert.Contains("repetition 2/2: exit 0", r.Stderr);
        Assert.Contains("2 repetitions after 1 warm-up", r.Stdout);
        var pids = File.ReadAllLines(counter);
        Assert.Equal(3, pids.Distinct().Count()); // three different processes
        Assert.DoesNotContain(Environment.ProcessId.ToString(), pids);

        var record = RunRecord.Parse(File.ReadAllText(json));
        var rep = record.Repeat!;
        Assert.Equal((2, 1), (rep.Repetitions, rep.Warmup));
        Assert.Equal([20.0, 30], rep.Runs.Select(x => x.Results["n"]!.GetValue<double>()));
        Assert.Equal(new Spread(2, 25, 20, 30), rep.Results["n"]);
        Assert.False(rep.Results.ContainsKey("label"));
        var work = rep.Runs.Select(x => x.Stages.Single(s => s.Name == "work").Seconds).Order().ToArray();
        Assert.Equal(new Spread(2, (work[0] + work[1]) / 2, work[0], work[1]), rep.Stages["work"]);
        Assert.Equal((work[0] + work[1]) / 2, record.Stages.Single(s => s.Name == "work").Seconds); // top level holds the medians
        Assert.Equal(25, record.Results["n"]!.GetValue<double>());

        var zero = Virtlab.Run(null, tmp.Path, "run", recipe, "--repeat", "0");
        Assert.True(zero.ExitCode == 3, zero.ToString());
        Assert.Contains("--repeat must be at least 1; got 0", zero.Stderr);
        var warmOnly = Virtlab.Run(null, tmp.Path, "run", recipe, "--warmup", "2");
        Assert.True(warmOnly.ExitCode == 3, warmOnly.ToString());
        Assert.Contains("--warmup needs --repeat N", warmOnly.Stderr);

        var failing = RunSeries(tmp.Path, "run", tmp.File("fail.csx", "Expect(false, \"never holds\");"), "--repeat", "3");
        Assert.True(failing.ExitCode == 1, failing.ToString());
        Assert.Contains("repetition 1/3 failed (exit 1)", failing.Stderr);
        Assert.Contains("expectation failed: never holds", failing.Stderr);
    }

    /// <summary>As <see cref="Virtlab.Run(string?, string, string[])"/>, with room for a series of processes on a loaded machine.</summary>
    private static ProcessResult RunSeries(string dir, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = dir };
        psi.ArgumentList.Add(Virtlab.Dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["VIRTLAB_CACHE"] = Path.Combine(dir, ".cache");
        psi.Environment.Remove("VIRTLAB_PLUGINS");
        psi.Environment["NO_COLOR"] = "1";
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromMinutes(5))) { p.Kill(true); throw new TimeoutException("virtlab " + string.Join(' ', args)); }
        p.WaitForExit();
        return new ProcessResult(p.ExitCode, stdout.Result, stderr.Result);
    }

    private static RunRecord Record(string recipe, string kernel, string tdpMmu, double populate, double rate, RepeatSummary? repeat = null) => new()
    {
        Recipe = new RecipeInfo("/somewhere/" + recipe, recipe + "-sha"),
        Args = new Dictionary<string, string?> { ["memory"] = "8G", ["backing"] = kernel == "6.1" ? "thp" : "hugetlb" },
        Argv = [],
        Environment = EnvironmentInfo.Capture("1.0.0") with
        {
            Kernel = kernel, Plugins = new Dictionary<string, string> { ["Mmu"] = "0.1.0", ["Kvm"] = tdpMmu },
        },
        Stages = [new StageRecord("populate", populate, new Dictionary<string, long>())],
        Expectations = [],
        Results = new Dictionary<string, JsonNode?> { ["rate"] = rate, ["backend"] = "Kvm" },
        Repeat = repeat,
    };

    [Fact]
    public void Compare_lists_environment_differences_then_ratios_and_marks_them()
    {
        using var tmp = new TempDir();
        var a = Path.Combine(tmp.Path, "a.json");
        var b = Path.Combine(tmp.Path, "b.json");
        var c = Path.Combine(tmp.Path, "c.json");
        Record("x.csx", "6.1", "Y", 2.0, 100).Write(a);
        Record("x.csx", "6.8", "N", 4.0, 150).Write(b);
        var r = Virtlab.Run(null, tmp.Path, "compare", a, b);
        Assert.True(r.ExitCode == 0, r.ToString());
        var lines = r.Stdout.Split('\n');
        var envAt = Array.FindIndex(lines, l => l.Contains("environment differences"));
        var stagesAt = Array.FindIndex(lines, l => l.Contains("stages and results"));
        Assert.True(envAt >= 0 && stagesAt > envAt, r.Stdout);
        Assert.Contains(lines, l => l.Contains("environment.kernel") && l.Contains("6.1") && l.Contains("6.8"));
        Assert.Contains(lines, l => l.Contains("environment.plugins.Kvm") && l.Contains(" Y ") && l.Contains(" N "));
        Assert.Contains(lines, l => l.Contains("args.backing") && l.Contains("thp") && l.Contains("hugetlb"));
        Assert.DoesNotContain(lines, l => l.Contains("args.memory") || l.Contains("environment.cpu") || l.Contains("recipe.sha256")); // equal: not listed
        Assert.Contains(lines, l => l.Contains("populate (ms)") && l.Contains("2,000") && l.Contains("4,000") && l.Contains("×2.000?"));
        Assert.Contains(lines, l => l.Contains("rate") && l.Contains("×1.500?"));

        // With spreads: populate 2.0 ± (1.9 … 2.1) vs 4.0 ± (3.8 … 4.2) is beyond; rate 100 (90…110) vs 105 (95…115) is within.
        static RepeatSummary Spreads(double p, double pr, double rate, double rr) => new()
        {
            Repetitions = 3, Stages = new Dictionary<string, Spread> { ["populate"] = new(3, p, p - pr, p + pr) },
            Results = new Dictionary<string, Spread> { ["rate"] = new(3, rate, rate - rr, rate + rr) }, Runs = [],
        };
        Record("x.csx", "6.1", "Y", 2.0, 100, Spreads(2.0, 0.1, 100, 10)).Write(a);
        Record("x.csx", "6.1", "Y", 4.0, 105, Spreads(4.0, 0.2, 105, 10)).Write(c);
        var plot = Path.Combine(tmp.Path, "cmp.png");
        var rs = Virtlab.Run(null, tmp.Path, "compare", a, c, "--plot", plot);
        Assert.True(rs.ExitCode == 0, rs.ToString());
        Assert.Contains("environment: the same in every record", rs.Stdout);
        var rl = rs.Stdout.Split('\n');
        Assert.Contains(rl, l => l.Contains("populate (ms)") && l.Contains("×2.000*"));
        Assert.Contains(rl, l => l.Contains("rate") && l.Contains("×1.050") && !l.Contains("×1.050*") && !l.Contains("×1.050?"));
        Assert.True(new FileInfo(plot).Length > 5_000);
        Assert.Equal((byte)'P', File.ReadAllBytes(plot)[1]);
    }

    [Fact]
    public void Compare_refuses_non_records_and_different_recipes()
    {
        using var tmp = new TempDir();
        var a = Path.Combine(tmp.Path, "a.json");
        var other = Path.Combine(tmp.Path, "other.json");
        Record("x.csx", "6.1", "Y", 2.0, 100).Write(a);
        Record("y.csx", "6.1", "Y", 3.0, 100).Write(other);
        var notJson = tmp.File("notes.txt", "hello");
        var wrongJson = tmp.File("package.json", "{\"name\": \"left-pad\"}");

        var r1 = Virtlab.Run(null, tmp.Path, "compare", a, notJson);
        Assert.True(r1.ExitCode == 3, r1.ToString());
        Assert.Contains($"{notJson}: not a run record: not JSON", r1.Stderr);
        var r2 = Virtlab.Run(null, tmp.Path, "compare", wrongJson, a);
        Assert.True(r2.ExitCode == 3, r2.ToString());
        Assert.Contains($"{wrongJson}: not a run record", r2.Stderr);
        var r3 = Virtlab.Run(null, tmp.Path, "compare", a, Path.Combine(tmp.Path, "missing.json"));
        Assert.True(r3.ExitCode == 3, r3.ToString());
        Assert.Contains("missing.json: no such file", r3.Stderr);
        var r4 = Virtlab.Run(null, tmp.Path, "compare", a, other);
        Assert.True(r4.ExitCode == 3, r4.ToString());
        Assert.Contains("different recipes", r4.Stderr);
        Assert.Contains("x.csx", r4.Stderr);
        Assert.Contains("y.csx", r4.Stderr);
        Assert.Contains("--force", r4.Stderr);
        var r5 = Virtlab.Run(null, tmp.Path, "compare", a, other, "--force");
        Assert.True(r5.ExitCode == 0, r5.ToString());
        Assert.Contains("×1.500", r5.Stdout);
        var r6 = Virtlab.Run(null, tmp.Path, "compare", a);
        Assert.True(r6.ExitCode == 3, r6.ToString());
        Assert.Contains("needs at least two run records", r6.Stderr);
    }

    private const string SlowRecipe = """
        using (var p = VirtLab.Sdk.Measure.Progress.Start("slow operation", 12, "steps"))
            for (int i = 0; i < 12; i++) { Thread.Sleep(60); p.Advance(); if (i == 6) Console.WriteLine("midway line"); }
        Result("done", 1);
        """;

    [Fact]
    public void Progress_shows_on_a_terminal_and_never_in_redirected_output()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("slow.csx", SlowRecipe);
        var redirected = Virtlab.Run(null, tmp.Path, "run", recipe);
        Assert.True(redirected.ExitCode == 0, redirected.ToString());
        Assert.DoesNotContain("slow operation", redirected.Stdout + redirected.Stderr);
        Assert.DoesNotContain("\x1b", redirected.Stdout + redirected.Stderr);
        Assert.Contains("midway line\n", redirected.Stdout);

        using var p = OnTerminal(tmp.Path, recipe);
        Assert.True(p.WaitForExit(TimeSpan.FromSeconds(90)), "virtlab on a pty did not finish:\n" + p.Screen);
        var screen = p.Screen;
        Assert.True(p.ExitCode == 0, screen);
        Assert.Matches(@"\r\x1b\[2Kslow operation  \[█+[ ▏▎▍▌▋▊▉]* *\]\s+\d+%  \d+ / 12 steps  [\d.]+ steps/s", screen);
        Assert.Contains("midway line", screen);
        Assert.Contains("done = 1", screen);
        // The bar is erased before script output and at the end: no bar text is left on the line a later write starts.
        Assert.DoesNotMatch(@"\]\s+\d+%[^\r]*midway line", screen);
        var last = screen.LastIndexOf("slow operation", StringComparison.Ordinal);
        Assert.StartsWith("\r\x1b[2K", screen[screen.IndexOf('\r', last)..]);
    }

    /// <summary>`virtlab run RECIPE` on a real pseudo-terminal, 80 columns.</summary>
    private static PtyProcess OnTerminal(string dir, string recipe) =>
        new(dir, new Dictionary<string, string?>
        {
            ["VIRTLAB_CACHE"] = Path.Combine(dir, ".cache"),
            ["NO_COLOR"] = "1",
            ["VIRTLAB_PLUGINS"] = null,
        }, 80, 24, "dotnet", Virtlab.Dll, "run", recipe);

    [Fact]
    public void Ctrl_c_during_a_progress_bar_cancels_the_run()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("long.csx", """
            using (var p = VirtLab.Sdk.Measure.Progress.Start("long operation", 100_000, "steps"))
                for (int i = 0; i < 100_000; i++) { Thread.Sleep(10); Cancellation.ThrowIfCancellationRequested(); p.Advance(); }
            Result("finished", true);
            """);
        using var p = OnTerminal(tmp.Path, recipe);
        Assert.True(p.WaitFor("long operation  [", TimeSpan.FromSeconds(90)), "no progress bar appeared:\n" + p.Screen);
        p.Type("\x03"); // Ctrl+C, typed on the terminal
        Assert.True(p.WaitForExit(TimeSpan.FromSeconds(60)), "Ctrl+C did not end the run:\n" + p.Screen);
        var text = p.Screen;
        Assert.True(p.ExitCode == 1, text);
        Assert.Contains("virtlab run: cancelled (Ctrl+C)", text);
        Assert.DoesNotContain("finished", text);
        // The bar was erased before the message: the message starts its line.
        Assert.Matches(@"\r\x1b\[2K(\r\x1b\[2K)*virtlab run: cancelled", text);
    }
}
