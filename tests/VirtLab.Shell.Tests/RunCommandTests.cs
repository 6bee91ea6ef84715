using System.Text.Json;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>The real `virtlab run` process: exit codes, messages, run record, cache.</summary>
public sealed class RunCommandTests
{
    [Fact]
    public void A_Size_prints_as_a_size_in_WriteLine_and_interpolation()
    {
        using var tmp = new TempDir();
        var r = Virtlab.Run(null, tmp.Path, "run", tmp.File("size.csx",
            "Console.WriteLine(1.GiB());\nConsole.WriteLine($\"{512.MiB()}\");\nConsole.WriteLine((long)4.KiB());\n"));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal(["1 GiB", "512 MiB", "4096"], r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
    }

    [Fact]
    public void Results_go_to_the_runs_stdout_even_when_the_recipe_redirected_Console_Out()
    {
        using var tmp = new TempDir();
        var r = Virtlab.Run(null, tmp.Path, "run", tmp.File("quiet.csx", "Console.SetOut(TextWriter.Null);\nConsole.WriteLine(\"hidden\");\nResult(\"answer\", 42);\n"));
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("answer = 42", r.Stdout);
        Assert.DoesNotContain("hidden", r.Stdout);
    }

    [Fact]
    public void Exit_codes()
    {
        using var tmp = new TempDir();
        var ok = tmp.File("ok.csx", "var n = Arg(\"n\", 10, test: 2);\nResult(\"n\", n);\nExpect(n > 0, \"n is positive\");\n");
        var r = Virtlab.Run(null, tmp.Path, "run", ok, "--", "--n", "5");
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Contains("n = 5", r.Stdout);

        var thrown = Virtlab.Run(null, tmp.Path, "run", tmp.File("throw.csx", "var x = 1;\nvoid Fail() => throw new InvalidOperationException(\"boom\");\nFail();\n"));
        Assert.True(thrown.ExitCode == 1, thrown.ToString());
        Assert.StartsWith("System.InvalidOperationException: boom\n", thrown.Stderr);
        Assert.Contains($"at {Path.Combine(tmp.Path, "throw.csx")}:2", thrown.Stderr);
        Assert.Contains($"at {Path.Combine(tmp.Path, "throw.csx")}:3", thrown.Stderr);
        Assert.DoesNotContain("Submission#", thrown.Stderr);
        Assert.DoesNotContain("Microsoft.CodeAnalysis", thrown.Stderr);

        var expect = Virtlab.Run(null, tmp.Path, "run", tmp.File("expect.csx", "Expect(1 + 1 == 3, \"arithmetic is broken\");"));
        Assert.True(expect.ExitCode == 1, expect.ToString());
        Assert.Contains("expectation failed: arithmetic is broken", expect.Stderr);

        var bad = Virtlab.Run(null, tmp.Path, "run", tmp.File("bad.csx", "// line 1\nvar a = 1;\nvar b = nope + a;\nint c = \"s\";\n"));
        Assert.True(bad.ExitCode == 2, bad.ToString());
        var badPath = Path.Combine(tmp.Path, "bad.csx");
        Assert.Contains($"{badPath}(3,9): error CS0103: The name 'nope' does not exist in the current context", bad.Stderr);
        Assert.Contains($"{badPath}(4,9): error CS0029:", bad.Stderr);

        var missing = Virtlab.Run(null, tmp.Path, "run", Path.Combine(tmp.Path, "missing.csx"));
        Assert.True(missing.ExitCode == 3, missing.ToString());
        Assert.Contains(Path.Combine(tmp.Path, "missing.csx"), missing.Stderr); // names the file it could not find
        var unknown = Virtlab.Run(null, tmp.Path, "run", "--bogus", ok);
        Assert.Equal(3, unknown.ExitCode);
        Assert.Contains("unknown option '--bogus'", unknown.Stderr);
        var badArg = Virtlab.Run(null, tmp.Path, "run", ok, "--", "--n", "many"); // bad recipe argument
        Assert.True(badArg.ExitCode == 3, badArg.ToString());
        Assert.Contains("--n", badArg.Stderr);
        Assert.Contains("many", badArg.Stderr);
        Assert.DoesNotContain("   at ", badArg.Stderr); // a usage error, not a stack trace

        var skip = Virtlab.Run(null, tmp.Path, "run", tmp.File("skip.csx", "Require(false, \"needs a unicorn\");\nResult(\"never\", 1);"));
        Assert.True(skip.ExitCode == 4, skip.ToString());
        Assert.Contains("skipped: needs a unicorn", skip.Stderr);
    }

    [Fact]
    public void Run_record_has_the_documented_fields()
    {
        using var tmp = new TempDir();
        var plugins = Path.Combine(tmp.Path, "plugins");
        PluginCompiler.Build(plugins, "Rec", PluginCompiler.Simple("Rec", "Rec"), version: "3.1.4");
        var recipe = tmp.File("rec.csx", """
            var size = Arg("memory", 1.GiB(), test: 4.MiB());
            Stage("populate", () => Count("pages", size.Pages4K));
            Expect(size > 0, "memory is positive");
            Expect(false, "this one fails");
            Result("pages", size.Pages4K);
            Result("answer", Rec.Answer);
            """);
        var json = Path.Combine(tmp.Path, "out", "run.json");
        var r = Virtlab.Run(null, tmp.Path, "run", "--plugins", plugins, "--json", json, "--test", recipe, "--", "--memory", "8M");
        Assert.True(r.ExitCode == 1, r.ToString());
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var root = doc.RootElement;
        Assert.Equal(recipe, root.GetProperty("recipe").GetProperty("path").GetString());
        Assert.Equal(Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData(File.ReadAllBytes(recipe))),
            root.GetProperty("recipe").GetProperty("sha256").GetString());
        Assert.Equal("8M", root.GetProperty("args").GetProperty("memory").GetString());
        var env = root.GetProperty("environment");
        Assert.Equal("3.1.4", env.GetProperty("plugins").GetProperty("Rec").GetString());
        // environment: virtlab and plugin versions, OS, kernel, CPU, cores, memory (git commit: Run_record_names_the_commits…)
        foreach (var f in new[] { "virtlab", "sdk", "os", "architecture", "kernel" })
            Assert.False(string.IsNullOrWhiteSpace(env.GetProperty(f).GetString()), f);
        if (File.ReadAllText("/proc/cpuinfo").Contains("model name")) Assert.False(string.IsNullOrWhiteSpace(env.GetProperty("cpu").GetString()), "cpu");
        Assert.Equal(Environment.ProcessorCount, env.GetProperty("cores").GetInt32());
        Assert.True(env.GetProperty("memory").GetInt64() > 64L << 20, env.GetProperty("memory").ToString());
        var stage = root.GetProperty("stages")[0];
        Assert.Equal("populate", stage.GetProperty("name").GetString());
        Assert.Equal(2048, stage.GetProperty("counters").GetProperty("pages").GetInt64());
        Assert.True(stage.GetProperty("seconds").GetDouble() >= 0);
        var exp = root.GetProperty("expectations");
        Assert.Equal(2, exp.GetArrayLength());
        Assert.True(exp[0].GetProperty("passed").GetBoolean());
        Assert.False(exp[1].GetProperty("passed").GetBoolean());
        Assert.Equal(2048, root.GetProperty("results").GetProperty("pages").GetInt64());
        Assert.Equal(42, root.GetProperty("results").GetProperty("answer").GetInt32());
        Assert.Equal(1, root.GetProperty("exitCode").GetInt32());
        Assert.True(root.GetProperty("testMode").GetBoolean());
    }

    [Fact]
    public void Second_run_comes_from_the_cache_without_loading_roslyn_and_load_closure_is_verified()
    {
        using var tmp = new TempDir();
        var env = new Dictionary<string, string> { ["VIRTLAB_VERBOSE"] = "1" };
        tmp.File("lib/_common.csx", "int Twice(int x) => 2 * x;\n");
        var recipe = tmp.File("cached.csx", "#load \"lib/_common.csx\"\nResult(\"v\", Twice(21));\n");

        var first = Virtlab.Run(null, tmp.Path, env, "run", recipe);
        Assert.True(first.ExitCode == 0, first.ToString());
        Assert.Contains("recipe cache miss", first.Stderr);
        Assert.Contains("roslyn loaded: yes", first.Stderr);
        Assert.Contains("v = 42", first.Stdout);

        var second = Virtlab.Run(null, tmp.Path, env, "run", recipe);
        Assert.True(second.ExitCode == 0, second.ToString());
        Assert.Contains("recipe cache hit", second.Stderr);
        Assert.Contains("roslyn loaded: no", second.Stderr);
        Assert.Contains("v = 42", second.Stdout);

        // A change in a #load-ed file is a miss even though the recipe itself did not change.
        tmp.File("lib/_common.csx", "int Twice(int x) => 2 * x + 1;\n");
        var third = Virtlab.Run(null, tmp.Path, env, "run", recipe);
        Assert.Contains("recipe cache miss", third.Stderr);
        Assert.Contains("v = 43", third.Stdout);
    }

    [Fact]
    public void Hash_r_references_work_compiled_and_cached_and_in_a_session()
    {
        using var tmp = new TempDir();
        Directory.CreateDirectory(Path.Combine(tmp.Path, "lib"));
        var lib = Path.Combine(tmp.Path, "lib", "Lib.dll");
        PluginCompiler.Compile(lib, "Lib", "namespace Lib; public static class Util { public static int Seven() => 7; }");
        var recipe = tmp.File("r.csx", "#r \"lib/Lib.dll\"\nResult(\"v\", Lib.Util.Seven());\n");
        for (int i = 0; i < 2; i++)
        {
            var r = Virtlab.Run(null, tmp.Path, "run", recipe);
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Contains("v = 7", r.Stdout);
        }
        var s = new VirtLab.Shell.Scripting.InteractiveSession(VirtLab.Shell.PluginHost.PluginSet.Empty, new VirtLab.Sdk.Measure.RecipeContext(), tmp.Path);
        var hr = s.Submit("#r \"lib/Lib.dll\"");
        Assert.True(hr.Succeeded, string.Join("\n", hr.Diagnostics) + hr.Exception);
        Assert.Equal(7, s.Submit("Lib.Util.Seven()").Value);
    }

    [Fact]
    public void Test_command_prints_one_line_per_recipe_and_the_summary()
    {
        using var tmp = new TempDir();
        tmp.File("scripts/pass.csx", "var n = Arg(\"n\", 1_000_000, test: 3);\nExpect(TestMode && n == 3, \"test mode uses small sizes\");\n");
        tmp.File("scripts/fail.csx", "Expect(false, \"fails on purpose\");\n");
        tmp.File("scripts/skip.csx", "Require(false, \"needs /dev/unicorn\");\n");
        tmp.File("scripts/_lib.csx", "this is a library, never run on its own");
        var r = Virtlab.Run(null, tmp.Path, "test");
        Assert.True(r.ExitCode == 1, r.ToString());
        var lines = r.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(4, lines.Length);
        Assert.Matches(@"^FAIL scripts/fail\.csx \(\d+\.\d\d s\) exit 1: expectation failed: fails on purpose$", lines[0]);
        Assert.Matches(@"^PASS scripts/pass\.csx \(\d+\.\d\d s\)$", lines[1]);
        Assert.Matches(@"^SKIP scripts/skip\.csx \(\d+\.\d\d s\) needs /dev/unicorn$", lines[2]);
        Assert.Equal("1 passed, 1 failed, 1 skipped", lines[3]);
    }
}

/// <summary>
/// The no-KVM path, whatever this machine offers: VIRTLAB_DISABLE_KVM=1 is set for the child `virtlab` only (never in
/// this process, whose other tests run in parallel), so KVM is unusable there even on a KVM host.
/// </summary>
public sealed class NoKvmTests
{
    private static readonly Dictionary<string, string> NoKvm = new() { ["VIRTLAB_DISABLE_KVM"] = "1" };

    [Fact]
    public void A_recipe_that_needs_kvm_is_skipped_with_the_reason_and_forcing_kvm_says_to_use_the_simulator()
    {
        using var tmp = new TempDir();
        tmp.File("t/kvm.csx", "RequireKvm();\nResult(\"never\", 1);\n");
        var t = Virtlab.Run(null, tmp.Path, NoKvm, "test", "t");
        Assert.True(t.ExitCode == 0, t.ToString()); // a skip is not a failure
        var lines = t.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        Assert.Matches(@"^SKIP t/kvm\.csx \(\d+\.\d\d s\) needs /dev/kvm: disabled by VIRTLAB_DISABLE_KVM$", lines[0]);
        Assert.Equal("0 passed, 0 failed, 1 skipped", lines[1]);

        // Backend.Auto falls back to the simulator; forcing KVM is a missing requirement (exit 4) and names the way out.
        var recipe = tmp.File("forced.csx", "var vm = Vm.Create(1.MiB());\nResult(\"auto\", vm.Backend);\nvm.Dispose();\nVm.Create(new VmOptions(1.MiB()) { Backend = Backend.Kvm });\n");
        var r = Virtlab.Run(null, tmp.Path, NoKvm, "run", recipe);
        Assert.True(r.ExitCode == 4, r.ToString());
        Assert.Equal("auto = Backend.Sim\n", r.Stdout);
        Assert.Equal("skipped: the KVM backend is not usable here: disabled by VIRTLAB_DISABLE_KVM. Use Backend.Sim (or Backend.Auto to fall back to it).\n", r.Stderr);
        // ... and `virtlab test` shows it as skipped, not failed.
        tmp.File("t2/forced.csx", "Vm.Create(new VmOptions(1.MiB()) { Backend = Backend.Kvm });\n");
        var t2 = Virtlab.Run(null, tmp.Path, NoKvm, "test", "t2");
        Assert.True(t2.ExitCode == 0, t2.ToString());
        Assert.Contains("0 passed, 0 failed, 1 skipped", t2.Stdout);
    }

    [Fact]
    public void Vm_IsKvmUsable_honours_VIRTLAB_DISABLE_KVM()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("usable.csx", "Result(\"usable\", Vm.IsKvmUsable(out var why));\nResult(\"why\", why);\n");
        var r = Virtlab.Run(null, tmp.Path, NoKvm, "run", recipe);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("usable = false\nwhy = \"disabled by VIRTLAB_DISABLE_KVM\"\n", r.Stdout);
    }
}

/// <summary>What `virtlab run` prints for failures wrapped by Task.Wait/reflection, runtime frames, and compile warnings.</summary>
public sealed class RunOutputTests
{
    [Fact]
    public void Wrapped_exceptions_print_the_message_their_exit_code_stands_for()
    {
        using var tmp = new TempDir();
        // Task.Wait wraps in AggregateException: still a skip (4) with its reason, and a usage error (3) with its message.
        var skip = Virtlab.Run(null, tmp.Path, "run", tmp.File("skip.csx", "Task.Run(() => Require(false, \"needs a unicorn\")).Wait();\n"));
        Assert.True(skip.ExitCode == 4, skip.ToString());
        Assert.Equal("skipped: needs a unicorn\n", skip.Stderr);

        var arg = Virtlab.Run(null, tmp.Path, "run", tmp.File("arg.csx", "Task.Run(() => Arg(\"n\", 1)).Wait();\n"), "--", "--n", "many");
        Assert.True(arg.ExitCode == 3, arg.ToString());
        Assert.StartsWith("virtlab run: --n: ", arg.Stderr);
        Assert.DoesNotContain("AggregateException", arg.Stderr);
        Assert.DoesNotContain("   at ", arg.Stderr);

        var boom = Virtlab.Run(null, tmp.Path, "run", tmp.File("boom.csx", "Task.Run(() => throw new InvalidOperationException(\"inner\")).Wait();\n"));
        Assert.True(boom.ExitCode == 1, boom.ToString());
        Assert.StartsWith("System.InvalidOperationException: inner\n", boom.Stderr);
    }

    [Fact]
    public void Runtime_exceptions_show_the_script_frames_in_lambdas_and_loaded_files()
    {
        using var tmp = new TempDir();
        tmp.File("lib/_inc.csx", "int Check(int v)\n{\n    if (v == 0) throw new ArgumentException(\"zero\");\n    return v;\n}\n");
        var recipe = tmp.File("lam.csx", "#load \"lib/_inc.csx\"\nvar xs = new[] { 2, 1, 0 };\nvar r = xs.Select(x =>\n    Check(x)).ToList();\n");
        for (int i = 0; i < 2; i++) // compiled, then from the cache
        {
            var run = Virtlab.Run(null, tmp.Path, "run", recipe);
            Assert.True(run.ExitCode == 1, run.ToString());
            var lines = run.Stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Equal("System.ArgumentException: zero", lines[0]);
            Assert.Equal($"   at {Path.Combine(tmp.Path, "lib", "_inc.csx")}:3", lines[1]);
            Assert.Equal($"   at {recipe}:4", lines[2]); // the lambda body
            Assert.Contains($"   at {recipe}:3", lines.Skip(3)); // the statement that ran it
            Assert.DoesNotContain(lines, l => l.Contains("System.Linq") || l.Contains("Submission#"));
        }
    }

    [Fact]
    public void Compile_warnings_are_shown_on_stderr_and_do_not_change_the_exit_code()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("warn.csx", "var n = 1;\nif (n == 1) { int unused; }\nResult(\"n\", n);\n");
        var expected = $"{recipe}(2,19): warning CS0168: The variable 'unused' is declared but never used\n";
        for (int i = 0; i < 2; i++) // compiled, then from the cache: the same warning
        {
            var r = Virtlab.Run(null, tmp.Path, new Dictionary<string, string>(), "run", recipe);
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Equal(expected, r.Stderr);
            Assert.Equal("n = 1\n", r.Stdout);
        }
        var failing = Virtlab.Run(null, tmp.Path, "run", tmp.File("warnfail.csx", "if (true) { int unused; }\nExpect(false, \"fails\");\n"));
        Assert.True(failing.ExitCode == 1, failing.ToString());
        Assert.Contains("warning CS0168", failing.Stderr);

        // Under `virtlab test` the reason is the failure, not the warning; a wrapped skip keeps its reason.
        tmp.File("t/a.csx", "if (true) { int unused; }\nExpect(false, \"fails on purpose\");\n");
        tmp.File("t/b.csx", "Task.Run(() => Require(false, \"needs /dev/unicorn\")).Wait();\n");
        var t = Virtlab.Run(null, tmp.Path, "test", "t");
        var lines = t.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Matches(@"^FAIL t/a\.csx \(\d+\.\d\d s\) exit 1: expectation failed: fails on purpose$", lines[0]);
        Assert.Matches(@"^SKIP t/b\.csx \(\d+\.\d\d s\) needs /dev/unicorn$", lines[1]);
        Assert.Equal("0 passed, 1 failed, 1 skipped", lines[2]);
    }

    [Fact]
    public void Redirected_output_has_no_ansi_even_through_spectres_static_console()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("ansi.csx", "Spectre.Console.AnsiConsole.MarkupLine(\"[red]red[/]\");\nShow(new Spectre.Console.Markup(\"[blue]blue[/]\\n\"));\nResult(\"v\", 1);\n");
        var env = new Dictionary<string, string> { ["TERM"] = "xterm-256color", ["NO_COLOR"] = "" };
        var r = Virtlab.Run(null, tmp.Path, env, "run", recipe);
        Assert.True(r.ExitCode == 0, r.ToString());
        Assert.Equal("red\nblue\nv = 1\n", r.Stdout);
    }

    [Fact]
    public void Run_record_names_the_commits_of_the_recipe_and_of_virtlab()
    {
        using var tmp = new TempDir();
        const string head = "0123456789abcdef0123456789abcdef01234567";
        tmp.File(".git/HEAD", head + "\n"); // a detached HEAD is all FindCommit needs
        var json = Path.Combine(tmp.Path, "r.json");
        var r = Virtlab.Run(null, tmp.Path, "run", "--json", json, tmp.File("sub/r.csx", "Result(\"x\", 1);"));
        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json));
        var env = doc.RootElement.GetProperty("environment");
        Assert.Equal(head, env.GetProperty("gitCommit").GetString());
        // The shell's own commit is there whenever its build knew it (built from a git checkout).
        var version = typeof(VirtLab.Shell.Cli.RunCommand).Assembly
            .GetCustomAttributes(typeof(System.Reflection.AssemblyInformationalVersionAttribute), false)
            .Cast<System.Reflection.AssemblyInformationalVersionAttribute>().Single().InformationalVersion;
        if (version.Contains('+')) Assert.Equal(version.Split('+')[1], env.GetProperty("virtlabCommit").GetString());
        Assert.Equal(0, doc.RootElement.GetProperty("exitCode").GetInt32());
    }

    [Fact]
    public void Run_record_says_how_the_process_was_prepared_and_plugins_get_the_same_treatment()
    {
        using var tmp = new TempDir();
        var plugins = Path.Combine(tmp.Path, "plugins");
        // A plugin whose WarmUp() leaves a mark the recipe reads after its first Vm.Create (which waits for the warm-up).
        PluginCompiler.Build(plugins, "Warm", PluginCompiler.Simple("Warm", "Warm").Replace(
            "protected override Api Create(PluginContext context) => new Api();",
            "protected override Api Create(PluginContext context) => new Api();\n    public static int WarmUps;\n    public override void WarmUp() => WarmUps++;"));
        var recipe = tmp.File("prep.csx", """
            var vm = Vm.Create(2.MiB(), backend: Backend.Sim);
            Result("warmUps", WarmNs.ThePlugin.WarmUps);
            var flags = System.Reflection.MethodBase.GetCurrentMethod()!.MethodImplementationFlags;
            Result("aggressiveOptimization", flags.HasFlag(System.Reflection.MethodImplAttributes.AggressiveOptimization));
            vm.Dispose();
            """);
        var json = Path.Combine(tmp.Path, "run.json");
        var r = Virtlab.Run(null, tmp.Path, "run", "--plugins", plugins, "--json", json, recipe);
        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        var results = doc.RootElement.GetProperty("results");
        Assert.Equal(1, results.GetProperty("warmUps").GetInt32());
        // Script code is compiled fully optimized at its first call (the top-level code is the state machine's MoveNext).
        Assert.True(results.GetProperty("aggressiveOptimization").GetBoolean());
        var prep = doc.RootElement.GetProperty("environment").GetProperty("preparation");
        var images = prep.GetProperty("images");
        // The shell and the SDK this test runs are Release builds: ReadyToRun images. The test plugin is compiled by
        // Roslyn without optimizations, and the record says so.
        Assert.Equal("ReadyToRun", images.GetProperty("virtlab").GetString());
        Assert.Equal("ReadyToRun", images.GetProperty("VirtLab.Sdk").GetString());
        Assert.Equal("IL (Debug build: JIT optimizations disabled)", images.GetProperty("plugin Warm").GetString());
        Assert.Equal("off", prep.GetProperty("runtime").GetProperty("TieredPGO").GetString());
        Assert.Contains("AggressiveOptimization", prep.GetProperty("scriptCode").GetString());
        var warmed = prep.GetProperty("warmedUp").EnumerateArray().Select(e => e.GetString()).ToList();
        Assert.Contains("plugin Warm", warmed);
        Assert.Contains(warmed, w => w!.StartsWith("dirty log"));
        Assert.Equal(0, prep.GetProperty("warmUpErrors").GetArrayLength());
        // The recipe's first Vm.Create collected the start's garbage once, after the warm-up.
        Assert.True(prep.GetProperty("settleSeconds").GetDouble() > 0);

        // VIRTLAB_WARMUP=0: nothing warmed, and the record says so.
        var off = Virtlab.Run(null, tmp.Path, new Dictionary<string, string> { ["VIRTLAB_WARMUP"] = "0" }, "run", "--plugins", plugins, "--json", json, recipe);
        Assert.True(off.ExitCode == 0, off.ToString());
        using var doc2 = JsonDocument.Parse(File.ReadAllText(json));
        Assert.Equal(0, doc2.RootElement.GetProperty("results").GetProperty("warmUps").GetInt32());
        Assert.Equal(0, doc2.RootElement.GetProperty("environment").GetProperty("preparation").GetProperty("warmedUp").GetArrayLength());
        Assert.Equal(0, doc2.RootElement.GetProperty("environment").GetProperty("preparation").GetProperty("settleSeconds").GetDouble());
    }

    [Fact]
    public void A_recipe_that_names_no_plugin_compiles_and_runs_without_loading_them()
    {
        using var tmp = new TempDir();
        var plugins = Path.Combine(tmp.Path, "plugins");
        var mark = Path.Combine(tmp.Path, "created.txt");
        // A plugin that leaves a line in a file each time its global is made (i.e. each time it is loaded).
        PluginCompiler.Build(plugins, "Lazy", PluginCompiler.Simple("Lazy", "Lazy").Replace(
            "protected override Api Create(PluginContext context) => new Api();",
            "protected override Api Create(PluginContext context) { System.IO.File.AppendAllText(System.Environment.GetEnvironmentVariable(\"LAZY_MARK\")!, \"created\\n\"); return new Api(); }"));
        var env = new Dictionary<string, string> { ["LAZY_MARK"] = mark };
        var json = Path.Combine(tmp.Path, "run.json");
        bool Listed()
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            return doc.RootElement.GetProperty("environment").TryGetProperty("plugins", out var p) && p.ValueKind == JsonValueKind.Object && p.TryGetProperty("Lazy", out _);
        }

        var none = Virtlab.Run(null, tmp.Path, env, "run", "--plugins", plugins, "--json", json, tmp.File("none.csx", "Result(\"answer\", 6 * 7);\n"));
        Assert.True(none.ExitCode == 0, none.ToString());
        Assert.Contains("answer = 42", none.Stdout);
        Assert.False(File.Exists(mark), "a recipe that names no plugin made the plugin's global: " + none);
        Assert.False(Listed());

        var uses = Virtlab.Run(null, tmp.Path, env, "run", "--plugins", plugins, "--json", json, tmp.File("uses.csx", "Result(\"answer\", Lazy.Answer);\n"));
        Assert.True(uses.ExitCode == 0, uses.ToString());
        Assert.Contains("answer = 42", uses.Stdout);
        Assert.Equal(["created"], File.ReadAllLines(mark));
        Assert.True(Listed());

        // A UTF-16 recipe (with its BOM) is read as the compiler reads it.
        var utf16 = Path.Combine(tmp.Path, "utf16.csx");
        File.WriteAllText(utf16, "Result(\"answer\", Lazy.Answer);\n", System.Text.Encoding.Unicode);
        var wide = Virtlab.Run(null, tmp.Path, env, "run", "--plugins", plugins, utf16);
        Assert.True(wide.ExitCode == 0, wide.ToString());
        Assert.Contains("answer = 42", wide.Stdout);

        // Reached only through a call the compiler makes by pattern (an extension Deconstruct on int, named nowhere in
        // the source): the compile without plugins fails, and the run compiles again with them.
        var deconstructing = Path.Combine(tmp.Path, "plugins2");
        PluginCompiler.Build(deconstructing, "Dec", PluginCompiler.Simple("Dec", "Dec") + """

            public static class DecExtensions { public static void Deconstruct(this int x, out int a, out int b) { a = x; b = x; } }
            """);
        var viaPattern = Virtlab.Run(null, tmp.Path, "run", "--plugins", deconstructing, tmp.File("pattern.csx", "var (a, b) = 21;\nResult(\"answer\", a + b);\n"));
        Assert.True(viaPattern.ExitCode == 0, viaPattern.ToString());
        Assert.Contains("answer = 42", viaPattern.Stdout);

        // The global named only in a #load-ed file: what a directive brings is not in the recipe's text, so it counts as named.
        tmp.File("lib.csx", "int Answer() => Lazy.Answer;\n");
        var viaLoad = Virtlab.Run(null, tmp.Path, env, "run", "--plugins", plugins, tmp.File("viaload.csx", "#load \"lib.csx\"\nResult(\"answer\", Answer());\n"));
        Assert.True(viaLoad.ExitCode == 0, viaLoad.ToString());
        Assert.Contains("answer = 42", viaLoad.Stdout);
    }

    [Fact]
    public void Launch_layout_runs_from_the_composite_image_and_finds_the_build_outputs_plugins()
    {
        // artifacts/launch/ (src/ReadyToRunComposite.targets), made by this Release build beside artifacts/bin/.
        var launch = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "launch"));
        var exe = Path.Combine(launch, "virtlab");
        Assert.True(File.Exists(exe), $"no launch layout at {launch}: the Release build makes it (unless -p:VirtLabComposite=false)");
        using var tmp = new TempDir();
        // Names an in-tree plugin (Mmu), so that it is loaded: from the build output the layout names.
        var recipe = tmp.File("layout.csx", "Result(\"answer\", System.Collections.Immutable.ImmutableArray.Create(6, 7).Aggregate((a, b) => a * b));\nResult(\"mmu\", Mmu is not null);");
        var json = Path.Combine(tmp.Path, "run.json");
        var psi = new System.Diagnostics.ProcessStartInfo(exe) { RedirectStandardOutput = true, RedirectStandardError = true, WorkingDirectory = tmp.Path };
        foreach (var a in new[] { "run", "--json", json, recipe }) psi.ArgumentList.Add(a);
        psi.Environment["VIRTLAB_CACHE"] = Path.Combine(tmp.Path, ".cache");
        psi.Environment.Remove("VIRTLAB_PLUGINS");
        using (var p = System.Diagnostics.Process.Start(psi)!)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            Assert.True(p.WaitForExit(TimeSpan.FromSeconds(180)));
            Assert.True(p.ExitCode == 0, $"exit {p.ExitCode}\n{stdout.Result}\n{stderr.Result}");
        }
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        Assert.Equal(42, doc.RootElement.GetProperty("results").GetProperty("answer").GetInt32());
        var env = doc.RootElement.GetProperty("environment");
        var prep = env.GetProperty("preparation");
        Assert.StartsWith("launch layout: self-contained", prep.GetProperty("layout").GetString());
        var images = prep.GetProperty("images");
        // Packages are components of the composite; the shell and the SDK keep their own images (outside its bubble).
        Assert.Equal("ReadyToRun (composite)", images.GetProperty("Spectre.Console").GetString());
        Assert.Equal("ReadyToRun", images.GetProperty("virtlab").GetString());
        Assert.Equal("ReadyToRun", images.GetProperty("VirtLab.Sdk").GetString());
        // The in-tree plugins are found in the build output the layout names.
        Assert.Contains(images.EnumerateObject(), i => i.Name.StartsWith("plugin ", StringComparison.Ordinal));
    }

    [Fact]
    public void Cached_recipe_without_a_vm_skips_the_warm_up_and_one_with_a_vm_or_a_plugin_still_gets_it()
    {
        using var tmp = new TempDir();
        var plugins = Path.Combine(tmp.Path, "plugins");
        PluginCompiler.Build(plugins, "Warm", PluginCompiler.Simple("Warm", "Warm").Replace(
            "protected override Api Create(PluginContext context) => new Api();",
            "protected override Api Create(PluginContext context) => new Api();\n    public static int WarmUps;\n    public override void WarmUp() => WarmUps++;"));
        var json = Path.Combine(tmp.Path, "run.json");
        JsonElement Prep(string recipe, out JsonDocument doc)
        {
            var r = Virtlab.Run(null, tmp.Path, "run", "--plugins", plugins, "--json", json, recipe);
            Assert.True(r.ExitCode == 0, r.ToString());
            doc = JsonDocument.Parse(File.ReadAllText(json));
            var env = doc.RootElement.GetProperty("environment");
            return env.GetProperty("preparation");
        }
        List<string?> Warmed(JsonElement prep) => prep.GetProperty("warmedUp").EnumerateArray().Select(e => e.GetString()).ToList();
        // The second run of a recipe: served from the cache.
        JsonElement Cached(string recipe, out JsonDocument doc)
        {
            Prep(recipe, out var first);
            first.Dispose();
            var prep = Prep(recipe, out doc);
            Assert.Equal("cached", prep.GetProperty("compile").GetString());
            return prep;
        }

        // Only computes and reports: the cached run starts no warm-up, and the record says why.
        var trivial = tmp.File("trivial.csx", "Result(\"answer\", 6 * 7);\n");
        var cold = Cached(trivial, out var d2);
        Assert.Contains("uses no VM", cold.GetProperty("warmUpSkipped").GetString());
        Assert.Empty(Warmed(cold));
        Assert.Equal(0, cold.GetProperty("warmUpSeconds").GetDouble());
        d2.Dispose();

        // Creates a VM: the cached run is warmed as before (SDK paths), and waits for it; the plugin it does not use is
        // not loaded on a cached run, so it has no warm-up to run.
        var withVm = tmp.File("vm.csx", "var vm = Vm.Create(2.MiB(), backend: Backend.Sim);\nvm.Dispose();\n");
        var warm = Cached(withVm, out var d4);
        Assert.False(warm.TryGetProperty("warmUpSkipped", out _));
        Assert.Contains(Warmed(warm), w => w!.StartsWith("dirty log"));
        Assert.DoesNotContain("plugin Warm", Warmed(warm));
        d4.Dispose();

        // Uses only a plugin (no VM of its own): the warm-up still starts (the recipe waits for it only at a Vm.Create,
        // so the record may say it was still running).
        var withPlugin = tmp.File("plugin.csx", "Result(\"warmUps\", WarmNs.ThePlugin.WarmUps);\n");
        var viaPlugin = Cached(withPlugin, out var d6);
        Assert.False(viaPlugin.TryGetProperty("warmUpSkipped", out _));
        Assert.NotEmpty(Warmed(viaPlugin));
        d6.Dispose();
    }

    [Fact]
    public void Cached_recipe_loads_only_the_plugins_it_uses()
    {
        using var tmp = new TempDir();
        var plugins = Path.Combine(tmp.Path, "plugins");
        PluginCompiler.Build(plugins, "Used", PluginCompiler.Simple("Used", "used", answer: 7));
        PluginCompiler.Build(plugins, "Other", PluginCompiler.Simple("Other", "other"));
        var json = Path.Combine(tmp.Path, "run.json");
        List<string> Loaded(string recipe, string compile)
        {
            var r = Virtlab.Run(null, tmp.Path, "run", "--plugins", plugins, "--json", json, recipe);
            Assert.True(r.ExitCode == 0, r.ToString());
            using var doc = JsonDocument.Parse(File.ReadAllText(json));
            var env = doc.RootElement.GetProperty("environment");
            Assert.StartsWith(compile, env.GetProperty("preparation").GetProperty("compile").GetString());
            return env.GetProperty("plugins").EnumerateObject().Select(p => p.Name).Order(StringComparer.Ordinal).ToList();
        }

        // Names no plugin: compiled and cached, none is loaded (PluginVocabulary reads what each provides from its metadata).
        var trivial = tmp.File("trivial.csx", "Result(\"answer\", 6 * 7);\n");
        Assert.Empty(Loaded(trivial, "in-process"));
        Assert.Empty(Loaded(trivial, "cached"));

        // Uses one plugin's global: compiled, every plugin is loaded (the compile may bind any of them); the cached run
        // loads that one, and its global works.
        var viaGlobal = tmp.File("global.csx", "Result(\"answer\", used.Answer);\n");
        Assert.Equal(["Other", "Used"], Loaded(viaGlobal, "in-process"));
        Assert.Equal(["Used"], Loaded(viaGlobal, "cached"));
        using (var doc = JsonDocument.Parse(File.ReadAllText(json)))
            Assert.Equal(7, doc.RootElement.GetProperty("results").GetProperty("answer").GetInt32());

        // Uses a plugin's type but not its global: loaded too.
        var viaType = tmp.File("type.csx", "Result(\"answer\", new OtherNs.Api().Answer);\n");
        Loaded(viaType, "in-process");
        Assert.Equal(["Other"], Loaded(viaType, "cached"));

        // The used plugin rebuilt: the entry is stale, so the run loads every plugin and compiles again.
        PluginCompiler.Build(plugins, "Used", PluginCompiler.Simple("Used", "used", answer: 8));
        Assert.Equal(["Other", "Used"], Loaded(viaGlobal, "in-process"));
        Assert.Equal(["Used"], Loaded(viaGlobal, "cached"));
        using (var doc = JsonDocument.Parse(File.ReadAllText(json)))
            Assert.Equal(8, doc.RootElement.GetProperty("results").GetProperty("answer").GetInt32());
    }
}
