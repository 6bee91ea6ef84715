using System.Diagnostics;
using System.Text.RegularExpressions;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Cli;

/// <summary>
/// <c>virtlab run --watch FILE</c>: the author's inner loop. Runs the recipe in a child shell (a fresh process each
/// time: a plugin cannot be unloaded, and a rebuilt one must be loaded anew), prints one summary line per run (exit
/// code, expectations, time), then waits until the recipe, a file it <c>#load</c>s (transitively) or the dll of a
/// plugin in the search paths changes, and runs it again. Ctrl+C ends the watch with the last run's exit code.
/// </summary>
public static partial class WatchRunner
{
    private static readonly TimeSpan Poll = TimeSpan.FromMilliseconds(200);
    // A build writes several files in a burst: run once they have been still for this long.
    private static readonly TimeSpan Settle = TimeSpan.FromMilliseconds(500);

    public static int Execute(RunOptions o)
    {
        if (!File.Exists(o.File))
        {
            Console.Error.WriteLine($"virtlab run: recipe not found: {o.File}");
            return ExitCodes.Usage;
        }
        using var stop = new CancellationTokenSource();
        // The child is in our process group and gets the Ctrl+C itself (it cancels its recipe); we stop after it.
        ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; stop.Cancel(); };
        Console.CancelKeyPress += onCancel;
        var recordPath = o.JsonPath ?? Path.Combine(Path.GetTempPath(), $"virtlab-watch-{Environment.ProcessId}.json");
        try
        {
            int last = ExitCodes.Success;
            string? changed = null;
            for (int run = 1; ; run++)
            {
                var watched = WatchedFiles(o);
                var before = Snapshot(watched);
                last = RunOnce(o, recordPath, run, changed, watched.Count);
                if (stop.IsCancellationRequested) return last;
                changed = WaitForChange(o, before, stop.Token);
                if (changed is null) return last;
            }
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
            if (o.JsonPath is null) File.Delete(recordPath);
        }
    }

    private static int RunOnce(RunOptions o, string recordPath, int run, string? changed, int watchedCount)
    {
        File.Delete(recordPath);
        var psi = TestCommand.SelfStartInfo();
        psi.ArgumentList.Add("run");
        foreach (var d in o.PluginDirectories) { psi.ArgumentList.Add("--plugins"); psi.ArgumentList.Add(d); }
        if (o.TestMode) psi.ArgumentList.Add("--test");
        if (o.NoCache) psi.ArgumentList.Add("--no-cache");
        if (o.PlotsDirectory is not null) { psi.ArgumentList.Add("--plots"); psi.ArgumentList.Add(o.PlotsDirectory); psi.ArgumentList.Add("--plot-format"); psi.ArgumentList.Add(o.PlotFormat); }
        psi.ArgumentList.Add("--json");
        psi.ArgumentList.Add(recordPath);
        psi.ArgumentList.Add(o.File);
        if (o.Arguments.Count > 0) psi.ArgumentList.Add("--");
        foreach (var a in o.Arguments) psi.ArgumentList.Add(a);

        Console.Out.Flush();
        var sw = Stopwatch.StartNew();
        using (var child = Process.Start(psi)!) // output goes straight to our terminal
        {
            child.WaitForExit();
            var code = child.ExitCode;
            Console.Out.WriteLine(Summary(run, code, Expectations(recordPath), sw.Elapsed, changed, watchedCount));
            Console.Out.Flush();
            return code;
        }
    }

    /// <summary>"watch: run 2 (recipe.csx changed): exit 1, 1 of 2 expectations passed, 0.84 s; watching 3 files, Ctrl+C ends".</summary>
    internal static string Summary(int run, int exit, (int Passed, int Total)? expectations, TimeSpan time, string? changed, int watchedCount)
    {
        var why = changed is null ? "" : $" ({Path.GetFileName(changed)} changed)";
        var exp = expectations is { } e ? $"{e.Passed} of {e.Total} expectation{(e.Total == 1 ? "" : "s")} passed" : "no run record";
        return $"watch: run {run}{why}: exit {exit}, {exp}, {time.TotalSeconds:F2} s; watching {watchedCount} file{(watchedCount == 1 ? "" : "s")}, Ctrl+C ends";
    }

    private static (int, int)? Expectations(string recordPath)
    {
        try
        {
            var r = RunRecord.Parse(File.ReadAllText(recordPath));
            return (r.Expectations.Count(e => e.Passed), r.Expectations.Count);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Text.Json.JsonException or NotSupportedException) { return null; }
    }

    /// <returns>The file that changed, or null when cancelled.</returns>
    private static string? WaitForChange(RunOptions o, Dictionary<string, (DateTime, long)?> before, CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            if (stop.WaitHandle.WaitOne(Poll)) return null;
            var now = Snapshot(WatchedFiles(o));
            var changed = Changed(before, now);
            if (changed is null) continue;
            // Let the burst finish (a build copies the plugin's files one by one; an editor saves through a temp file).
            while (!stop.IsCancellationRequested)
            {
                if (stop.WaitHandle.WaitOne(Settle)) return null;
                var later = Snapshot(WatchedFiles(o));
                if (Changed(now, later) is null) return changed;
                now = later;
            }
        }
        return null;
    }

    private static string? Changed(Dictionary<string, (DateTime, long)?> a, Dictionary<string, (DateTime, long)?> b)
    {
        foreach (var (path, stamp) in b)
            if (!a.TryGetValue(path, out var old) || old != stamp) return path;
        return a.Keys.FirstOrDefault(k => !b.ContainsKey(k));
    }

    private static Dictionary<string, (DateTime, long)?> Snapshot(IEnumerable<string> files)
    {
        var d = new Dictionary<string, (DateTime, long)?>(StringComparer.Ordinal);
        foreach (var f in files)
        {
            var info = new FileInfo(f);
            d[f] = info.Exists ? (info.LastWriteTimeUtc, info.Length) : null;
        }
        return d;
    }

    /// <summary>The recipe, the files it #loads (transitively), and the main dll of every plugin folder in the search paths.</summary>
    internal static IReadOnlyList<string> WatchedFiles(RunOptions o)
    {
        var files = new List<string>();
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var queue = new Queue<string>([Path.GetFullPath(o.File)]);
        while (queue.TryDequeue(out var f))
        {
            if (!seen.Add(f)) continue;
            files.Add(f);
            if (!File.Exists(f)) continue;
            string text;
            try { text = File.ReadAllText(f); }
            catch (IOException) { continue; }
            foreach (Match m in LoadDirective().Matches(text))
                queue.Enqueue(Path.GetFullPath(Path.Combine(Path.GetDirectoryName(f)!, m.Groups[1].Value)));
        }
        foreach (var dir in PluginSet.Discover(new PluginSearchPaths(o.PluginDirectories)))
            files.Add(Path.Combine(dir, Path.GetFileName(dir) + ".dll"));
        return files;
    }

    [GeneratedRegex("""^\s*#load\s+"([^"]+)"\s*$""", RegexOptions.Multiline)]
    private static partial Regex LoadDirective();
}
