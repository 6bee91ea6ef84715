using System.IO.Compression;
using System.Text.Json.Nodes;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Rendering;
using VirtLab.Shell.Rendering;
using Xunit;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>The REPL's host side: Ctrl+C and replay, many-pass results, the piped exit code, #r "nuget: …".</summary>
[Collection("repl")]
public sealed class ReplHostTests
{
    private const string SimVm = "var vm = Vm.Create(4.MiB(), vcpus: 2, backend: Backend.Sim);";

    [Fact]
    public void Ctrl_C_on_an_untokened_workload_cancels_that_submission_without_a_replay()
    {
        using var repl = new ReplProcess();
        repl.Send(SimVm);
        // No cancellation: argument: the SDK sees the REPL's Ctrl+C through RunCancellation. A million passes take minutes.
        repl.Send("Console.WriteLine(\"running\"); vm.Run(Workload.Write(passes: 1_000_000));");
        repl.WaitFor("^running$");
        Thread.Sleep(300); // into the run
        repl.Interrupt();
        repl.WaitFor("^cancelled$", stderr: true);
        repl.Send("vm.Vcpus"); // the same host, the same VM
        repl.WaitFor("^2$");
        Assert.DoesNotContain("host killed", repl.Stdout);
        Assert.Equal(0, repl.Count("^↻"));
        Assert.Equal(0, repl.Count("replaying"));
    }

    [Fact]
    public void Replay_shows_its_progress_and_Ctrl_C_stops_it_keeping_what_replayed()
    {
        using var repl = new ReplProcess();
        var marker = Path.Combine(repl.Home, "ran-once");
        repl.Send("var a = 1;");
        // Quick the first time, then (in the replay) waits for Ctrl+C through the ambient cancellation.
        repl.Send($"if (File.Exists(\"{marker}\")) VirtLab.Sdk.RunCancellation.Sleep(TimeSpan.FromMinutes(5)); File.WriteAllText(\"{marker}\", \"\");");
        repl.Send("var c = 3;");
        repl.Send("a + c");
        repl.WaitFor("^4$");
        repl.Send("#reload");
        repl.WaitFor("^… replaying 1/4 · var a = 1;$");
        repl.WaitFor("^… replaying 2/4 · if \\(File.Exists");
        Thread.Sleep(300);
        repl.Interrupt();
        repl.WaitFor(@"^↻ reloaded \(no plugins\); replayed 1 submission in \d+ ms \(re-run: values recomputed, not kept\); " +
            @"Ctrl\+C stopped the replay, 3 dropped: 2/4 if \(File.Exists.*; 3/4 var c = 3;; 4/4 a \+ c$");
        repl.Send("a * 10");
        repl.WaitFor("^10$");
        repl.Send("c");
        repl.WaitFor("CS0103: The name 'c' does not exist", stderr: true);
        repl.Send("#save " + Path.Combine(repl.Home, "kept.csx"));
        repl.WaitFor("saved 2 submissions to"); // var a = 1; and a * 10
        Assert.DoesNotContain("var c", File.ReadAllText(Path.Combine(repl.Home, "kept.csx")));
    }

    [Fact]
    public void A_workload_with_many_passes_is_summarised_per_vCPU_and_shown_in_full_on_request()
    {
        using var repl = new ReplProcess();
        repl.Send(SimVm);
        repl.Send("var r = vm.Run(Workload.Write(passes: 40));");
        repl.Send("r");
        repl.WaitFor("40 passes: Show\\(result, full: true\\)");
        Assert.Matches("median", repl.Stdout);
        Assert.DoesNotContain("pass 39", repl.Stdout);
        repl.Send("Show(r, full: true);");
        repl.WaitFor(@"^│ 39\s+│"); // a row per pass
        repl.Send("r.PerVcpu[1].PassTimes.Count");
        repl.WaitFor("^40$");
        // Show(x) as the value prints it once.
        repl.Send("Show(vm)");
        repl.Send("\"end\"");
        repl.WaitFor("^\"end\"$");
        Assert.Equal(1, repl.Count("Sim VM, 2 vCPU"));
    }

    [Fact]
    public void Many_passes_render_as_statistics_and_a_sparkline()
    {
        var passes = Enumerable.Range(0, 2000).Select(i => TimeSpan.FromMilliseconds(i % 100 == 0 ? 5 : 1)).ToArray();
        var w = new WorkloadResult(Workload.Write(passes: 2000), Backend.Sim, 1, TimeSpan.FromSeconds(2), passes,
            [new VcpuResult(0, VcpuRole.Mixed, passes, 0, 2000)], 0);
        var text = Render(w.ToRenderable());
        Assert.Contains("min ms", text);
        Assert.Matches(@"│ 0\s+│ Mixed\s+│ 0\s+│ 2000\s+│ 2000\s+│ 1\s+│ 1\s+│ 5\s+│ 2080\s+│ [▁-█]{32} │", text);
        Assert.DoesNotContain("…", text);
        var full = Render(w.ToRenderable(full: true));
        Assert.Matches(@"│ 1999\s+│ 1\s+│ 1\s+│", full);
        // Ten passes or fewer keep a column per pass.
        var few = passes[..3];
        Assert.Contains("pass 2 ms", Render(new WorkloadResult(Workload.Write(passes: 3), Backend.Sim, 1, TimeSpan.FromSeconds(1), few,
            [new VcpuResult(0, VcpuRole.Mixed, few, 0, 3)], 0).ToRenderable()));
    }

    private static string Render(Spectre.Console.Rendering.IRenderable r)
    {
        var w = new StringWriter();
        var console = Consoles.Create(w, isTerminal: false);
        console.Profile.Width = 200;
        console.Write(r);
        return w.ToString();
    }

    [Fact]
    public void Piped_mode_exits_1_when_a_submission_failed()
    {
        using var repl = new ReplProcess();
        repl.Send("1 + 1");
        repl.Send("throw new InvalidOperationException(\"boom\");");
        repl.Send("2 + 2");
        repl.WaitFor("^4$");
        repl.CloseInput();
        Assert.Equal(1, repl.WaitForExit());
    }

    /// <summary>Two packages in a local folder source: TinyGreeter 1.0.0 depends on TinyWords 2.0.0.</summary>
    private static string LocalFeed(TempDir tmp)
    {
        var feed = Path.Combine(tmp.Path, "feed");
        Directory.CreateDirectory(feed);
        var words = Path.Combine(tmp.Path, "build", "TinyWords.dll");
        Directory.CreateDirectory(Path.GetDirectoryName(words)!);
        PluginCompiler.Compile(words, "TinyWords", "namespace TinyWords; public static class Words { public static string Hello => \"hello from a package\"; }");
        var greeter = Path.Combine(tmp.Path, "build", "TinyGreeter.dll");
        PluginCompiler.Compile(greeter, "TinyGreeter", "namespace TinyGreeter; public static class Greeter { public static string Greet() => TinyWords.Words.Hello + \"'s dependency\"; }", words);
        Pack(feed, "TinyWords", "2.0.0", words, "");
        Pack(feed, "TinyGreeter", "1.0.0", greeter, "<dependencies><group targetFramework=\"netstandard2.0\"><dependency id=\"TinyWords\" version=\"2.0.0\" /></group></dependencies>");
        // Only the local folder, and a packages folder of the test's own: no network, ~/.nuget untouched.
        tmp.File("nuget.config", $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources><clear /><add key="local" value="{feed}" /></packageSources>
              <config><add key="globalPackagesFolder" value="{Path.Combine(tmp.Path, "packages")}" /></config>
            </configuration>
            """);
        return feed;
    }

    private static void Pack(string feed, string id, string version, string dll, string dependencies)
    {
        using var zip = ZipFile.Open(Path.Combine(feed, $"{id}.{version}.nupkg"), ZipArchiveMode.Create);
        using (var w = new StreamWriter(zip.CreateEntry($"{id}.nuspec").Open()))
            w.Write($"""
                <?xml version="1.0" encoding="utf-8"?>
                <package xmlns="http://schemas.microsoft.com/packaging/2013/05/nuspec.xsd">
                  <metadata><id>{id}</id><version>{version}</version><authors>test</authors><description>test package</description>{dependencies}</metadata>
                </package>
                """);
        zip.CreateEntryFromFile(dll, $"lib/netstandard2.0/{Path.GetFileName(dll)}");
    }

    [Fact]
    public void Nuget_reference_restores_the_package_and_its_dependencies_in_the_REPL()
    {
        using var tmp = new TempDir();
        LocalFeed(tmp);
        using var repl = new ReplProcess(tmp.Path, []);
        repl.Send("#r \"nuget: TinyGreeter, 1.0.0\"");
        repl.Send("TinyGreeter.Greeter.Greet()");
        repl.WaitFor("^\"hello from a package's dependency\"$", timeout: TimeSpan.FromSeconds(120));
        repl.Send("#r \"nuget: NoSuchPackage, 9.9.9\"");
        repl.WaitFor(@"#r ""nuget: NoSuchPackage, 9.9.9"": cannot restore NoSuchPackage 9.9.9 .*NU1101", stderr: true, timeout: TimeSpan.FromSeconds(120));
    }

    [Fact]
    public void Nuget_reference_in_a_recipe_is_recorded_with_its_closure()
    {
        using var tmp = new TempDir();
        LocalFeed(tmp);
        var recipe = tmp.File("pkg.csx", """
            #r "nuget: TinyGreeter, 1.0.0"
            Result("greeting", TinyGreeter.Greeter.Greet());
            """);
        var json = Path.Combine(tmp.Path, "run.json");
        var r = Virtlab.Run(null, tmp.Path, "run", recipe, "--json", json);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("hello from a package's dependency", r.Stdout);
        var packages = JsonNode.Parse(File.ReadAllText(json))!["packages"]!.AsArray().Select(n => (string)n!).ToArray();
        Assert.Equal(["TinyGreeter/1.0.0", "TinyWords/2.0.0"], packages);

        var bad = tmp.File("bad.csx", "#r \"nuget: TinyGreeter, 7.0.0\"\nResult(\"x\", 1);\n");
        var b = Virtlab.Run(null, tmp.Path, "run", bad);
        Assert.Equal(2, b.ExitCode);
        Assert.Contains("#r \"nuget: TinyGreeter, 7.0.0\": cannot restore TinyGreeter 7.0.0", b.Stderr);
    }
}
