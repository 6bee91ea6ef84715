using System.Collections.Concurrent;
using System.Diagnostics;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using VirtLab.Shell.Cli;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>
/// One plugin scaffolded with <c>virtlab new plugin Heat</c> outside the repository and built with <c>dotnet build</c>
/// against the SDK package <c>virtlab pack-sdk</c> wrote to a local folder, offline: the only package source is that
/// folder, the other packages come from the machine's package cache (as a fallback folder, so the SDK package is not
/// cached there). Built once for all the tests of <see cref="PluginAuthoringTests"/>.
/// </summary>
public sealed class ScaffoldFixture : IDisposable
{
    public static readonly TimeSpan BuildTimeout = TimeSpan.FromMinutes(6);
    private readonly TempDir _tmp = new();

    public string Root => _tmp.Path;
    public string Feed => Path.Combine(Root, "feed");
    public string Plugin => Path.Combine(Root, "Heat");
    public ProcessResult PackSdk { get; }
    public ProcessResult New { get; }
    public ProcessResult Build { get; }

    public ScaffoldFixture()
    {
        PackSdk = Virtlab.Run(null, Root, "pack-sdk", Feed);
        New = Virtlab.Run(null, Root, "new", "plugin", "Heat", "--output", Plugin, "--packages", Feed);
        Build = DotnetBuild(Plugin, Feed, Root);
    }

    /// <summary><c>dotnet build -c Release</c> restoring from <paramref name="feed"/> only, the machine's cache as fallback.</summary>
    public static ProcessResult DotnetBuild(string dir, string feed, string scratch, params string[] more)
    {
        var cache = Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p ? p
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");
        if (Directory.Exists("/opt/nuget/packages")) cache += "%3B/opt/nuget/packages"; // the machine's offline package store (%3B: an escaped ;)
        return Exec("dotnet", dir, BuildTimeout,
            ["build", "-c", "Release", "-m:1", "-nologo", "-clp:ErrorsOnly;NoSummary",
             $"-p:RestoreSources={feed}", $"-p:RestorePackagesPath={Path.Combine(scratch, "nuget")}", $"-p:RestoreFallbackFolders={cache}", .. more]);
    }

    public static ProcessResult Exec(string file, string dir, TimeSpan timeout, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        using var proc = Process.Start(psi)!;
        var stdout = proc.StandardOutput.ReadToEndAsync();
        var stderr = proc.StandardError.ReadToEndAsync();
        if (!proc.WaitForExit(timeout)) { proc.Kill(true); throw new TimeoutException($"{file} {string.Join(' ', args)} in {dir}"); }
        proc.WaitForExit();
        return new ProcessResult(proc.ExitCode, stdout.Result, stderr.Result);
    }

    public void Dispose() => _tmp.Dispose();
}

/// <summary>The tests that run <c>dotnet build</c>: alone, after the others, so their load does not push the timed
/// shell tests of other classes past their timeouts.</summary>
[CollectionDefinition("dotnet build", DisableParallelization = true)]
public sealed class DotnetBuildCollection;

[Collection("dotnet build")]
public class PluginAuthoringTests(ScaffoldFixture fx) : IClassFixture<ScaffoldFixture>
{
    [Fact]
    public void A_scaffolded_plugin_builds_offline_against_the_packed_SDK_passes_its_tests_and_runs_in_virtlab_run()
    {
        Assert.True(fx.PackSdk.ExitCode == 0, fx.PackSdk.ToString());
        Assert.True(File.Exists(Path.Combine(fx.Feed, $"VirtLab.Sdk.{PluginAuthoring.SdkPackageVersion}.nupkg")), fx.PackSdk.ToString());
        Assert.True(fx.New.ExitCode == 0, fx.New.ToString());
        Assert.True(fx.Build.ExitCode == 0, fx.Build.ToString());

        // The package's targets made a plugin folder without the assemblies the shell shares.
        var folder = Path.Combine(fx.Plugin, "plugins", "Heat");
        Assert.True(File.Exists(Path.Combine(folder, "Heat.dll")), string.Join(", ", Directory.GetFiles(fx.Plugin, "*", SearchOption.AllDirectories)));
        Assert.False(File.Exists(Path.Combine(folder, "VirtLab.Sdk.dll")));
        Assert.False(File.Exists(Path.Combine(folder, "Spectre.Console.dll")));

        var tests = ScaffoldFixture.Exec("dotnet", fx.Plugin, ScaffoldFixture.BuildTimeout, "test", "-c", "Release", "--no-build", "--nologo");
        Assert.True(tests.ExitCode == 0, tests.ToString());
        Assert.Contains("Passed:     3", tests.Stdout);

        var run = Virtlab.Run(Path.Combine(fx.Root, ".cache"), fx.Plugin, "run", "--test", "--plugins", "plugins", "recipes/Heat.csx");
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("dirtyPages = 1024", run.Stdout); // test mode: 8 MiB, every other one of 2048 pages
        Assert.DoesNotContain("not loaded", run.Stderr);

        var list = Virtlab.Run(null, fx.Plugin, "plugins", "--plugins", "plugins");
        Assert.Matches($@"│ Heat\s+│ 0\.1\.0\s+│ {VirtLab.Sdk.SdkVersion.Major}\.{VirtLab.Sdk.SdkVersion.Current.Minor}\s+│ Heat\s+│ loaded", list.Stdout);
    }

    [Fact]
    public void New_plugin_refuses_a_name_that_is_no_identifier_and_a_folder_that_is_not_empty()
    {
        using var tmp = new TempDir();
        var bad = Virtlab.Run(null, tmp.Path, "new", "plugin", "my-plugin");
        Assert.Equal(3, bad.ExitCode);
        Assert.Contains("'my-plugin' is not a plugin name", bad.Stderr);
        tmp.File("Taken/x.txt", "");
        var taken = Virtlab.Run(null, tmp.Path, "new", "plugin", "Taken");
        Assert.Equal(3, taken.ExitCode);
        Assert.Contains("exists and is not empty", taken.Stderr);
    }

    [Fact]
    public void Watch_reruns_after_a_recipe_change_and_after_a_plugin_rebuild_and_Ctrl_C_ends_it()
    {
        Assert.True(fx.Build.ExitCode == 0, fx.Build.ToString());
        // A copy, so the other tests keep the scaffold as built (same depth: nuget.config's relative feed path holds).
        var dir = Path.Combine(fx.Root, "Watch");
        foreach (var f in Directory.GetFiles(fx.Plugin, "*", SearchOption.AllDirectories))
        {
            var rel = Path.GetRelativePath(fx.Plugin, f);
            if (rel.Split(Path.DirectorySeparatorChar).Any(p => p is "bin" or "obj" or "tests")) continue;
            Directory.CreateDirectory(Path.GetDirectoryName(Path.Combine(dir, rel))!);
            File.Copy(f, Path.Combine(dir, rel));
        }
        var recipe = Path.Combine(dir, "recipes", "Heat.csx");

        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = dir };
        foreach (var a in (string[])[Virtlab.Dll, "run", "--watch", "--test", "--plugins", "plugins", "recipes/Heat.csx"]) psi.ArgumentList.Add(a);
        psi.Environment["VIRTLAB_CACHE"] = Path.Combine(dir, ".cache");
        psi.Environment["NO_COLOR"] = "1";
        psi.Environment.Remove("VIRTLAB_PLUGINS");
        using var p = Process.Start(psi)!;
        var lines = new BlockingCollection<string>();
        var all = new ConcurrentQueue<string>();
        p.OutputDataReceived += (_, e) => { if (e.Data is { } l) { all.Enqueue(l); lines.Add(l); } };
        p.ErrorDataReceived += (_, e) => { if (e.Data is { } l) all.Enqueue(l); };
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        string Next(string prefix)
        {
            var until = DateTime.UtcNow + TimeSpan.FromSeconds(120);
            while (lines.TryTake(out var l, until - DateTime.UtcNow > TimeSpan.Zero ? until - DateTime.UtcNow : TimeSpan.Zero))
                if (l.StartsWith(prefix, StringComparison.Ordinal)) return l;
            throw new TimeoutException($"no '{prefix}' line; output:\n{string.Join('\n', all)}");
        }
        try
        {
            Assert.Matches(@"^watch: run 1: exit 0, 1 of 1 expectation passed, \d+\.\d\d s; watching \d+ files", Next("watch: run 1"));

            File.AppendAllText(recipe, "Result(\"edited\", 1);\n");
            Assert.StartsWith("watch: run 2 (Heat.csx changed): exit 0, 1 of 1 expectation passed", Next("watch: run 2"));

            // The plugin now writes every fourth page: the recipe's expectation fails, and the run says so.
            var api = Path.Combine(dir, "src", "Heat", "HeatApi.cs");
            File.WriteAllText(api, File.ReadAllText(api).Replace("DefaultStride = 8192", "DefaultStride = 16384"));
            var build = ScaffoldFixture.DotnetBuild(Path.Combine(dir, "src", "Heat"), fx.Feed, dir);
            Assert.True(build.ExitCode == 0, build.ToString());
            Assert.StartsWith("watch: run 3 (Heat.dll changed): exit 1, 0 of 1 expectation passed", Next("watch: run 3"));

            using (var kill = Process.Start("kill", ["-INT", p.Id.ToString()])) kill.WaitForExit();
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(30)), "Ctrl+C did not end the watch");
            p.WaitForExit();
            Assert.Equal(1, p.ExitCode); // the last run's
            var output = string.Join('\n', all);
            Assert.Contains("edited = 1", output);
            Assert.Contains("dirtyPages = 512", output);
        }
        finally { if (!p.HasExited) p.Kill(true); }
    }

    [Fact]
    public void A_plugin_built_against_another_SDK_major_is_refused_with_a_clear_message()
    {
        Assert.True(fx.Build.ExitCode == 0, fx.Build.ToString());
        // The SDK of this repository packed as the next major (what a major release would publish), into a feed of its own.
        int major = Version.Parse(PluginAuthoring.SdkPackageVersion).Major, next = major + 1;
        var repo = RepositoryRoot();
        var feed2 = Path.Combine(fx.Root, "feed2");
        var pack = ScaffoldFixture.Exec("dotnet", repo, ScaffoldFixture.BuildTimeout, "build", "src/Sdk/VirtLab.Sdk.csproj", "-c", "Release", "-m:1", "-nologo",
            "-clp:ErrorsOnly;NoSummary", $"-p:VirtLabSdkVersion={next}.0.0", "-p:VirtLabReadyToRun=false", $"-p:ArtifactsPath={Path.Combine(fx.Root, "artifacts2")}",
            $"-p:PackageOutputPath={feed2}"); // the SDK packs on build
        Assert.True(pack.ExitCode == 0, pack.ToString());

        var dir = Path.Combine(fx.Root, "Major2");
        Directory.CreateDirectory(Path.Combine(dir, "src", "Heat"));
        foreach (var f in Directory.GetFiles(Path.Combine(fx.Plugin, "src", "Heat")))
            File.Copy(f, Path.Combine(dir, "src", "Heat", Path.GetFileName(f)));
        File.Copy(Path.Combine(fx.Plugin, "Directory.Build.props"), Path.Combine(dir, "Directory.Build.props"));
        var csproj = Path.Combine(dir, "src", "Heat", "Heat.csproj");
        File.WriteAllText(csproj, File.ReadAllText(csproj).Replace($"Include=\"VirtLab.Sdk\" Version=\"{PluginAuthoring.SdkPackageVersion}\"", $"Include=\"VirtLab.Sdk\" Version=\"{next}.0.0\""));
        var build = ScaffoldFixture.DotnetBuild(Path.Combine(dir, "src", "Heat"), feed2, dir);
        Assert.True(build.ExitCode == 0, build.ToString());

        var run = Virtlab.Run(Path.Combine(dir, ".cache"), dir, "run", "--test", "--plugins", "plugins", Path.Combine(fx.Plugin, "recipes", "Heat.csx"));
        Assert.Contains("virtlab: plugin Heat not loaded", run.Stderr);
        Assert.Contains($"SDK major mismatch: built against VirtLab.Sdk {next}.x ({next}.0), this shell provides {major}.x ({VirtLab.Sdk.SdkVersion.Text}); rebuild the plugin against SDK {major}", run.Stderr);
        Assert.Equal(2, run.ExitCode); // the recipe's global Heat does not exist
    }

    [Fact]
    public void Init_writes_references_that_make_a_recipe_resolve_every_SDK_type()
    {
        Assert.True(fx.Build.ExitCode == 0, fx.Build.ToString());
        using var tmp = new TempDir();
        var init = Virtlab.Run(null, tmp.Path, "init", tmp.Path, "--plugins", Path.Combine(fx.Plugin, "plugins"));
        Assert.True(init.ExitCode == 0, init.ToString());
        var omnisharp = File.ReadAllText(Path.Combine(tmp.Path, "omnisharp.json"));
        Assert.Contains("\"rspFilePath\": \"virtlab.rsp\"", omnisharp);
        var (refs, usings) = PluginAuthoring.ReadResponseFile(Path.Combine(tmp.Path, "virtlab.rsp"));
        Assert.Contains(refs, r => Path.GetFileName(r) == "Heat.dll");

        // What an editor's analysis sees: the recipe as a script with the response file's references and imports.
        const string recipe = """
            var vm = Vm.Create(new VmOptions(8.MiB()) { Backend = Backend.Sim, Vcpus = 1 });
            MemSlot slot = vm.TestSlot;
            slot.LogDirtyPages = true;
            WorkloadResult written = vm.Run(Workload.Write(stride: 8192));
            DirtyBitmap log = slot.GetDirtyLog();
            IEnumerable<PageRun> runs = log.Runs;
            Size size = 4.KiB();
            DirtyScanResult scan = new HeatApi().DirtyScan(size);
            var chain = typeof(SplitRing);
            vm.Dispose();
            """;
        var withInit = Analyse(recipe, refs, usings);
        Assert.Empty(withInit.Errors);
        // Every name of a type in the recipe binds to VirtLab.Sdk's (or the plugin's) type.
        var typeNames = withInit.Tree.GetRoot().DescendantNodes().OfType<IdentifierNameSyntax>()
            .Select(n => (n.Identifier.Text, Symbol: withInit.Model.GetSymbolInfo(n).Symbol)).Where(x => x.Symbol is INamedTypeSymbol).ToList();
        foreach (var expected in (string[])["Vm", "VmOptions", "Backend", "MemSlot", "WorkloadResult", "Workload", "DirtyBitmap", "PageRun", "Size", "DirtyScanResult", "HeatApi", "SplitRing"])
        {
            var found = typeNames.FirstOrDefault(t => t.Text == expected).Symbol;
            Assert.True(found is not null, $"{expected} did not bind to a type");
            Assert.Contains(found!.ContainingAssembly.Name, (string[])["VirtLab.Sdk", "Heat"]);
        }
        // Without what init wrote, the same analysis fails (the check above can fail).
        Assert.Contains(Analyse(recipe, [], []).Errors, d => d.Id is "CS0246" or "CS0103");
    }

    private sealed record Analysis(SyntaxTree Tree, SemanticModel Model, IReadOnlyList<Diagnostic> Errors);

    private static Analysis Analyse(string source, IReadOnlyList<string> references, IReadOnlyList<string> usings)
    {
        var tree = CSharpSyntaxTree.ParseText(source, new CSharpParseOptions(kind: SourceCodeKind.Script));
        var framework = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Where(p => Path.GetFileName(p) is var n && (n.StartsWith("System.", StringComparison.Ordinal) || n is "netstandard.dll" or "mscorlib.dll"));
        var compilation = CSharpCompilation.CreateScriptCompilation("recipe", tree,
            framework.Concat(references).Select(r => (MetadataReference)MetadataReference.CreateFromFile(r)),
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, usings: usings));
        return new Analysis(tree, compilation.GetSemanticModel(tree), compilation.GetDiagnostics().Where(d => d.Severity == DiagnosticSeverity.Error).ToList());
    }

    private static string RepositoryRoot()
    {
        for (var d = new DirectoryInfo(AppContext.BaseDirectory); d is not null; d = d.Parent)
            if (File.Exists(Path.Combine(d.FullName, "Shell.sln"))) return d.FullName;
        throw new InvalidOperationException($"no Shell.sln above {AppContext.BaseDirectory}");
    }
}
