using System.Text.Json;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>The real `virtlab run` process: exit codes, messages, run record, cache.</summary>
public sealed class RunCommandTests
{
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

        Assert.Equal(3, Virtlab.Run(null, tmp.Path, "run", Path.Combine(tmp.Path, "missing.csx")).ExitCode);
        var unknown = Virtlab.Run(null, tmp.Path, "run", "--bogus", ok);
        Assert.Equal(3, unknown.ExitCode);
        Assert.Contains("unknown option '--bogus'", unknown.Stderr);
        Assert.Equal(3, Virtlab.Run(null, tmp.Path, "run", ok, "--", "--n", "many").ExitCode); // bad recipe argument

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
        Assert.Equal("8M", root.GetProperty("args").GetProperty("memory").GetString()?.Replace("MiB", "M").Replace(" ", ""));
        var env = root.GetProperty("environment");
        Assert.Equal("3.1.4", env.GetProperty("plugins").GetProperty("Rec").GetString());
        foreach (var f in new[] { "virtlab", "os", "architecture", "cores" }) Assert.True(env.TryGetProperty(f, out _), f);
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
