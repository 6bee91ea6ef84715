using System.Diagnostics;
using System.Globalization;

namespace VirtLab.Shell.Cli;

/// <summary>
/// <c>virtlab test</c>: each recipe runs as its own <c>virtlab run --test</c> process (a crash or a leaked VM
/// costs only that recipe); exit 0 = PASS, 4 = SKIP (reason from its "skipped:" line), anything else = FAIL.
/// </summary>
public static class TestCommand
{
    public static int Execute(IReadOnlyList<string> paths, IReadOnlyList<string> pluginDirs, int timeoutSeconds)
    {
        var recipes = new List<string>();
        foreach (var p in paths.Count == 0 ? ["scripts"] : paths)
        {
            if (File.Exists(p)) recipes.Add(p);
            else if (Directory.Exists(p))
                recipes.AddRange(Directory.GetFiles(p, "*.csx", SearchOption.AllDirectories)
                    .Where(f => !Path.GetFileName(f).StartsWith('_')).Order(StringComparer.Ordinal));
            else
            {
                Console.Error.WriteLine($"virtlab test: no such file or folder: {p}");
                return ExitCodes.Usage;
            }
        }

        int passed = 0, failed = 0, skipped = 0;
        foreach (var recipe in recipes)
        {
            var (code, seconds, stderr) = RunOne(recipe, pluginDirs, timeoutSeconds);
            var name = Path.GetRelativePath(Directory.GetCurrentDirectory(), recipe);
            var time = seconds.ToString("0.00", CultureInfo.InvariantCulture) + " s";
            string line;
            switch (code)
            {
                case ExitCodes.Success: passed++; line = $"PASS {name} ({time})"; break;
                case ExitCodes.RequirementMissing:
                    skipped++;
                    line = $"SKIP {name} ({time}) {Reason(stderr, "skipped: ")}";
                    break;
                default:
                    failed++;
                    line = $"FAIL {name} ({time}) {(code is null ? $"timed out after {timeoutSeconds} s" : $"exit {code}: {Reason(stderr, null)}")}";
                    break;
            }
            Console.Out.WriteLine(line.TrimEnd());
            Console.Out.Flush();
        }
        Console.Out.WriteLine($"{passed} passed, {failed} failed, {skipped} skipped");
        return failed > 0 ? ExitCodes.Failure : ExitCodes.Success;
    }

    /// <summary>Why a recipe was skipped or failed: its <paramref name="marker"/> line, else its first stderr line that is
    /// not shell chatter (plugin load notes, VIRTLAB_VERBOSE lines) or a compile warning.</summary>
    internal static string Reason(string stderr, string? marker)
    {
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
        if (marker is not null && lines.FirstOrDefault(l => l.StartsWith(marker, StringComparison.Ordinal)) is { } m) return m[marker.Length..];
        return lines.FirstOrDefault(l => !IsNoise(l)) ?? lines.FirstOrDefault() ?? "";
    }

    private static bool IsNoise(string line) =>
        line.StartsWith("virtlab: ", StringComparison.Ordinal)
        || line.StartsWith("warning CS", StringComparison.Ordinal)
        || System.Text.RegularExpressions.Regex.IsMatch(line, @"^.*\(\d+,\d+\): warning [A-Z]+\d+: ");

    private static (int? Code, double Seconds, string Stderr) RunOne(string recipe, IReadOnlyList<string> pluginDirs, int timeoutSeconds)
    {
        var psi = SelfStartInfo();
        psi.ArgumentList.Add("run");
        psi.ArgumentList.Add("--test");
        foreach (var d in pluginDirs) { psi.ArgumentList.Add("--plugins"); psi.ArgumentList.Add(d); }
        psi.ArgumentList.Add(recipe);
        return RunSelf(psi, TimeSpan.FromSeconds(timeoutSeconds));
    }

    /// <summary>
    /// Runs a child shell started from <see cref="SelfStartInfo"/> with no input, stdout drained and discarded, stderr
    /// captured; killed (code null) when it outlives <paramref name="timeout"/>. Ctrl+C reaches the child too (same
    /// process group), so it cancels and exits on its own.
    /// </summary>
    public static (int? Code, double Seconds, string Stderr) RunSelf(ProcessStartInfo psi, TimeSpan? timeout = null)
    {
        psi.RedirectStandardOutput = true;
        psi.RedirectStandardError = true;
        psi.RedirectStandardInput = true;
        var sw = Stopwatch.StartNew();
        using var proc = Process.Start(psi)!;
        proc.StandardInput.Close();
        var stdout = proc.StandardOutput.ReadToEndAsync();
        var stderr = proc.StandardError.ReadToEndAsync();
        if (timeout is { } t && !proc.WaitForExit(t))
        {
            try { proc.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
            proc.WaitForExit();
            return (null, sw.Elapsed.TotalSeconds, stderr.Result);
        }
        proc.WaitForExit();
        _ = stdout.Result;
        return (proc.ExitCode, sw.Elapsed.TotalSeconds, stderr.Result);
    }

    /// <summary>How to start this same shell again: the apphost, or `dotnet virtlab.dll` when run that way.</summary>
    public static ProcessStartInfo SelfStartInfo()
    {
        var processPath = Environment.ProcessPath ?? "dotnet";
        var psi = new ProcessStartInfo(processPath) { UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(processPath) == "dotnet")
            psi.ArgumentList.Add(typeof(TestCommand).Assembly.Location);
        return psi;
    }
}
