// bench-shell.csx — the shell's own figures, measured on real `virtlab` processes:
//   0. the floor: `virtlab --version` (runtime start and exit), for comparing runs on a machine whose speed varies;
//   1. wall time of `virtlab run` on a trivial recipe: first run (compile) in-process, with no compile server running
//      yet (the run starts one), with a warm compile server; cached;
//   2. REPL start to first result (piped stdin: process start → "42" printed), and the same on a pseudo-terminal;
//   3. hot swap: a plugin rebuilt while the REPL runs → the reload notice, and → the new version answering;
//   4. the REPL front end's memory (RSS, anonymous) after 1 and after --swaps swaps.
// Targets: first run ≤ 0.5 s (no compile server), cached run ≤ 0.1 s (issue 8); REPL start to first result ≤ 0.6 s
// piped and on a terminal (issue 14); swap ≤ 2 s, memory not growing over 20 swaps (issue 2).
// The compile server lives under the private HOME below: this bench starts and stops its own.
//
//   ./virtlab run scripts/bench-shell.csx -- --runs 10 --swaps 20 --pause 2s   (--pause 0: swaps back to back)

using System.Diagnostics;
using System.Text.RegularExpressions;

var runs  = Arg("runs", 10, test: 2);
var swaps = Arg("swaps", 20, test: 2);
var pause = Arg("pause", TimeSpan.FromSeconds(2), test: TimeSpan.Zero);  // between swaps, as between two rebuilds; 0 = back to back

var virtlab = System.Reflection.Assembly.GetEntryAssembly()!.Location;   // this virtlab.dll
// Started as this shell was: the launch layout's apphost under ./virtlab (self-contained, composite image), else
// `dotnet virtlab.dll` (the build output).
var self = Environment.ProcessPath ?? "dotnet";
var viaDotnet = Path.GetFileNameWithoutExtension(self) == "dotnet";
var sdk = typeof(Vm).Assembly.Location;
var work = Directory.CreateTempSubdirectory("virtlab-bench-shell-").FullName;
var env = new Dictionary<string, string>
{
    ["VIRTLAB_CACHE"] = Path.Combine(work, "cache"),   // a private cache: "first run" really compiles
    ["HOME"] = Path.Combine(work, "home"),             // a private REPL history
    ["NO_COLOR"] = "1",
    ["VIRTLAB_SERVER"] = "0",
    ["VIRTLAB_SERVER_IDLE"] = "60",                    // a server an interrupted bench leaves exits by itself
};

Directory.CreateDirectory(env["HOME"]);

ProcessStartInfo Virtlab(params string[] args)
{
    var psi = new ProcessStartInfo(viaDotnet ? "dotnet" : self) { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
    if (viaDotnet) psi.ArgumentList.Add(virtlab);
    foreach (var a in args) psi.ArgumentList.Add(a);
    foreach (var (k, v) in env) psi.Environment[k] = v;
    psi.Environment.Remove("VIRTLAB_PLUGINS");
    psi.Environment.Remove("XDG_CACHE_HOME");   // the compile server's folder follows HOME
    return psi;
}

double Median(List<double> xs) { xs.Sort(); return xs.Count % 2 == 1 ? xs[xs.Count / 2] : (xs[xs.Count / 2 - 1] + xs[xs.Count / 2]) / 2; }

double TimeRun(string recipe)
{
    var sw = Stopwatch.StartNew();
    using var p = Process.Start(Virtlab("run", recipe))!;
    var output = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
    p.WaitForExit();
    if (p.ExitCode != 0) throw new Exception($"virtlab run {recipe} exited {p.ExitCode}: {output}");
    return sw.Elapsed.TotalSeconds;
}

int Cli(params string[] args)
{
    using var p = Process.Start(Virtlab(args))!;
    p.StandardOutput.ReadToEnd(); p.StandardError.ReadToEnd();
    p.WaitForExit();
    return p.ExitCode;
}
// The server binds its socket once warm; polling the folder costs nothing, `server status` (a process) confirms.
var serverDir = Path.Combine(env["HOME"], ".cache", "virtlab", "server");
void WaitForServer()
{
    var sw = Stopwatch.StartNew();
    while (!(Directory.Exists(serverDir) && Directory.GetFiles(serverDir, "*.sock").Length > 0 && Cli("server", "status") == 0))
    {
        if (sw.Elapsed > TimeSpan.FromSeconds(120)) throw new TimeoutException("the compile server never came up");
        Thread.Sleep(50);
    }
}
int fileNo = 0;
string NewRecipe()
{
    var f = Path.Combine(work, $"trivial-{fileNo}.csx");
    File.WriteAllText(f, $"// run {fileNo++}\nResult(\"answer\", 6 * 7);\n");
    return f;
}

// 0. What every row below stands on, in the same minutes: this shell starting and exiting (`virtlab --version`: the
//    runtime, the composite image, System.CommandLine's parse). Figures from different days compare as ratios to it.
var floor = new List<double>();
Stage("floor: virtlab --version", () =>
{
    for (int i = 0; i < runs; i++) { var sw = Stopwatch.StartNew(); Cli("--version"); floor.Add(sw.Elapsed.TotalSeconds); }
});
Result("versionSeconds", Median(floor));

// 1. virtlab run: each first run gets new content (a cache miss); the cached runs repeat one file.
var first = new List<double>(); var firstCold = new List<double>(); var firstWarm = new List<double>(); var cached = new List<double>();
Stage("run: first (compile in-process, no server)", () => { for (int i = 0; i < runs; i++) first.Add(TimeRun(NewRecipe())); });
env["VIRTLAB_SERVER"] = "1";
// No server running: this run compiles in-process and starts one (which warms up once the run has exited); a few only,
// each server's warm-up costs seconds of CPU.
Stage("run: first, no compile server running yet", () =>
{
    for (int i = 0; i < Math.Min(runs, 3); i++)
    {
        Cli("server", "stop");
        firstCold.Add(TimeRun(NewRecipe()));
        WaitForServer();
    }
});
Stage("run: first, warm compile server", () => { for (int i = 0; i < runs; i++) firstWarm.Add(TimeRun(NewRecipe())); });
Stage("run: cached", () => { for (int i = 0; i < runs; i++) cached.Add(TimeRun(Path.Combine(work, "trivial-0.csx"))); });
Cli("server", "stop");
env["VIRTLAB_SERVER"] = "0";
Result("shellStartedAs", viaDotnet ? $"dotnet {virtlab}" : self);
Result("runFirstSeconds", Median(first));
Result("runFirstNoServerYetSeconds", Median(firstCold));
Result("runFirstWarmServerSeconds", Median(firstWarm));
Result("runCachedSeconds", Median(cached));

// A REPL on piped stdin whose stdout lines are collected as they come.
sealed class Repl : IDisposable
{
    readonly Process p; readonly List<string> lines = new(); readonly object gate = new();
    public Repl(ProcessStartInfo psi)
    {
        psi.RedirectStandardInput = true;
        p = Process.Start(psi)!;
        p.OutputDataReceived += (_, e) => { if (e.Data is null) return; lock (gate) { lines.Add(e.Data); Monitor.PulseAll(gate); } };
        p.ErrorDataReceived += (_, e) => { };
        p.BeginOutputReadLine(); p.BeginErrorReadLine();
    }
    public int Pid => p.Id;
    public void Send(string line) { p.StandardInput.WriteLine(line); p.StandardInput.Flush(); }
    /// <summary>Waits for the <paramref name="nth"/> stdout line matching <paramref name="pattern"/>.</summary>
    public void WaitFor(string pattern, int nth = 1, int timeoutSeconds = 60)
    {
        var re = new Regex(pattern);
        var deadline = DateTime.UtcNow.AddSeconds(timeoutSeconds);
        lock (gate)
            while (lines.Count(l => re.IsMatch(l)) < nth)
                if (!Monitor.Wait(gate, deadline - DateTime.UtcNow > TimeSpan.Zero ? deadline - DateTime.UtcNow : TimeSpan.Zero))
                    throw new TimeoutException($"REPL never printed /{pattern}/ ({nth}); it printed:\n" + string.Join("\n", lines));
    }
    public void Dispose() { try { p.StandardInput.Close(); if (!p.WaitForExit(10_000)) p.Kill(true); } catch (InvalidOperationException) { } p.Dispose(); }
}

// 2. REPL start to first result, piped: process start → "42" printed.
List<double> PipedFirstResults()
{
    var times = new List<double>();
    for (int i = 0; i < runs; i++)
    {
        var sw = Stopwatch.StartNew();
        using var repl = new Repl(Virtlab());
        repl.Send("6 * 7");
        repl.WaitFor("^42$");
        times.Add(sw.Elapsed.TotalSeconds);
    }
    return times;
}

// 2b. The same on a terminal: script(1) gives the REPL a pseudo-terminal, so the line editor and the host's terminal
// output are what a user gets. Timed from process start to "42" on the screen: "6 * 7" is typed once the prompt shows
// and Enter once it is echoed (Enter again every 0.5 s if a line editor not yet reading lost it; counted in the time).
string Plain(string s) => Regex.Replace(s, @"\x1b\[[0-9;?]*[A-Za-z]|\x1b[=>]|\r", "");
List<double> TerminalFirstResults()
{
    var times = new List<double>();
    for (int i = 0; i < runs; i++)
    {
        var psi = new ProcessStartInfo("/usr/bin/script") { UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { "-qfc", viaDotnet ? $"dotnet '{virtlab}'" : $"'{self}'", "/dev/null" }) psi.ArgumentList.Add(a);
        foreach (var (k, v) in env) psi.Environment[k] = v;
        psi.Environment["TERM"] = "xterm-256color";
        psi.Environment.Remove("NO_COLOR");
        psi.Environment.Remove("VIRTLAB_PLUGINS");
        psi.Environment.Remove("XDG_CACHE_HOME");
        var sw = Stopwatch.StartNew();
        using var p = Process.Start(psi)!;
        var screen = new System.Text.StringBuilder();
        var reader = Task.Run(() => { var b = new char[4096]; int n; while ((n = p.StandardOutput.Read(b, 0, b.Length)) > 0) lock (screen) screen.Append(b, 0, n); });
        string Screen() { lock (screen) return Plain(screen.ToString()); }
        int state = 0; var lastEnter = TimeSpan.Zero;
        while (sw.Elapsed < TimeSpan.FromSeconds(60))
        {
            var text = Screen();
            if (state == 0 && text.Contains('>')) { p.StandardInput.Write("6 * 7"); p.StandardInput.Flush(); state = 1; }
            else if (state >= 1 && Regex.IsMatch(text, @"\n42\n")) { times.Add(sw.Elapsed.TotalSeconds); break; }
            else if (state == 1 && text.Contains("6 * 7") || state == 2 && sw.Elapsed - lastEnter > TimeSpan.FromSeconds(0.5))
            { p.StandardInput.Write("\r"); p.StandardInput.Flush(); state = 2; lastEnter = sw.Elapsed; }
            Thread.Sleep(2);
        }
        if (times.Count != i + 1) throw new TimeoutException("the REPL on a terminal never printed 42; the screen:\n" + Screen());
        p.StandardInput.Write("\u0004"); p.StandardInput.Flush(); // Ctrl+D leaves
        if (!p.WaitForExit(10_000)) p.Kill(true);
        reader.Wait(5_000);
    }
    return times;
}
var hasScript = File.Exists("/usr/bin/script");

// Without a compile server (the evaluation host compiles with a cold Roslyn), then with a warm one (the host lets it
// compile until it has warmed itself).
var starts = Stage("repl: start to first result, no compile server", () => PipedFirstResults());
var termStarts = hasScript ? Stage("repl on a terminal: start to first result, no compile server", () => TerminalFirstResults()) : [];
env["VIRTLAB_SERVER"] = "1";
TimeRun(NewRecipe()); // a cache miss starts the server
WaitForServer();
var serverStarts = Stage("repl: start to first result, warm compile server", () => PipedFirstResults());
var serverTermStarts = hasScript ? Stage("repl on a terminal: start to first result, warm compile server", () => TerminalFirstResults()) : [];
Cli("server", "stop");
env["VIRTLAB_SERVER"] = "0";
Result("replFirstResultSeconds", Median(starts));
Result("replFirstResultWarmServerSeconds", Median(serverStarts));
if (hasScript)
{
    Result("replTerminalFirstResultSeconds", Median(termStarts));
    Result("replTerminalFirstResultWarmServerSeconds", Median(serverTermStarts));
}

// 3 and 4. A real plugin project, built twice (v1, v2) with dotnet build; a swap copies the other build in place.
string BuildPlugin(int version)
{
    var dir = Path.Combine(work, $"src-v{version}");
    Directory.CreateDirectory(dir);
    File.WriteAllText(Path.Combine(dir, "BenchGreeter.csproj"), $"""
        <Project Sdk="Microsoft.NET.Sdk">
          <PropertyGroup>
            <TargetFramework>net10.0</TargetFramework>
            <Version>{version}.0.0</Version>
            <ImplicitUsings>enable</ImplicitUsings>
          </PropertyGroup>
          <ItemGroup>
            <Reference Include="VirtLab.Sdk"><HintPath>{sdk}</HintPath><Private>false</Private></Reference>
          </ItemGroup>
        </Project>
        """);
    File.WriteAllText(Path.Combine(dir, "Plugin.cs"), $$"""
        using VirtLab.Sdk.Plugins;
        namespace BenchGreeter;
        public sealed class Api { public int Version => {{version}}; }
        public sealed class Plugin : VirtLabPlugin<Api>
        {
            public override string GlobalName => "Greeter";
            public override string Description => "bench-shell test plugin, v{{version}}";
            protected override Api Create(PluginContext context) => new();
        }
        """);
    var psi = new ProcessStartInfo("dotnet", ["build", dir, "-c", "Release", "-o", Path.Combine(dir, "out"), "-nologo", "-v", "quiet"])
        { UseShellExecute = false, RedirectStandardOutput = true, RedirectStandardError = true };
    using var p = Process.Start(psi)!;
    var log = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
    p.WaitForExit();
    if (p.ExitCode != 0) throw new Exception("building the bench plugin failed:\n" + log);
    return Path.Combine(dir, "out", "BenchGreeter.dll");
}

var builds = Stage("build plugin v1 and v2", () => new[] { BuildPlugin(1), BuildPlugin(2) });
var pluginDir = Path.Combine(work, "plugins", "BenchGreeter");
Directory.CreateDirectory(pluginDir);
File.Copy(builds[0], Path.Combine(pluginDir, "BenchGreeter.dll"));

(long rss, long anon) Memory(int pid)
{
    long Kb(string file, string key) => File.ReadLines(file).Where(l => l.StartsWith(key)).Select(l => long.Parse(l.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1])).FirstOrDefault() * 1024;
    return (Kb($"/proc/{pid}/status", "VmRSS:"), Kb($"/proc/{pid}/smaps_rollup", "Anonymous:"));
}

var notice = new List<double>(); var answer = new List<double>();
var memory = new List<(int swap, long rss, long anon)>();
Stage("hot swap", () =>
{
    using var repl = new Repl(Virtlab("--plugins", pluginDir));
    repl.Send("var before = 41;");
    repl.Send("Greeter.Version + before");
    repl.WaitFor("^42$");
    for (int s = 1; s <= swaps; s++)
    {
        int version = s % 2 == 1 ? 2 : 1;
        Thread.Sleep(pause);   // a real rebuild takes seconds; back to back, the standby host may still be warming
        var sw = Stopwatch.StartNew();
        File.Copy(builds[version - 1], Path.Combine(pluginDir, "BenchGreeter.dll"), overwrite: true);   // what a rebuild's copy does
        repl.WaitFor("reloaded BenchGreeter", s);
        notice.Add(sw.Elapsed.TotalSeconds);
        repl.Send($"\"v\" + (Greeter.Version + before - 41) + \" after swap {s}\"");
        repl.WaitFor($"^\"v{version} after swap {s}\"$");
        answer.Add(sw.Elapsed.TotalSeconds);
        if (s == 1 || s == swaps / 2 || s == swaps)
        {
            var (rss, anon) = Memory(repl.Pid);
            memory.Add((s, rss, anon));
        }
    }
});
Result("swapNoticeSeconds", Median(notice));
Result("swapAnswerSeconds", Median(answer));
Result("swapAnswerWorstSeconds", answer.Max());
foreach (var (s, rss, anon) in memory)
{
    Result($"frontEndRssAfter{s}Swaps", new Size(rss));
    Result($"frontEndAnonymousAfter{s}Swaps", new Size(anon));
}

Expect(answer.Count == swaps, $"every one of the {swaps} swaps activated the other build");
if (!TestMode)
{
    Expect(Median(firstWarm) <= 0.5, $"a first virtlab run (warm compile server) takes ≤ 0.5 s (median {Median(firstWarm):F3} s)");
    Expect(Median(cached) <= 0.1, $"a cached virtlab run takes ≤ 0.1 s (median {Median(cached):F3} s)");
    Expect(Median(serverStarts) <= 0.6, $"REPL start to first result (warm compile server) ≤ 0.6 s (median {Median(serverStarts):F3} s)");
    if (hasScript) Expect(Median(serverTermStarts) <= 0.6, $"REPL on a terminal: start to first result (warm compile server) ≤ 0.6 s (median {Median(serverTermStarts):F3} s)");
    Expect(answer.Max() <= 2.0, $"every swap active within 2 s (worst {answer.Max():F3} s)");
}
Directory.Delete(work, recursive: true);
