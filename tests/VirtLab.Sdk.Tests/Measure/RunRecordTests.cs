using System.Text.Json;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public sealed class RunRecordTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vl-runrecord-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private (RunRecord Record, JsonElement Json) Run(Exception? error = null)
    {
        var recipe = Path.Combine(_dir, "r.csx");
        File.WriteAllText(recipe, "Expect(true, \"ok\");\n");
        var ctx = new RecipeContext(RecipeArgs.Parse("--memory", "8G", "--flag"), testMode: true) { Log = null };
        var g = new RecipeGlobals(ctx);
        g.Arg("memory", 1.GiB());
        g.Arg("inflate", 7.GiB(), test: 64.MiB());
        g.Arg("flag", false);
        using (var s = g.Stage("populate")) s.Count("pages", 512);
        g.Stage("verify", () => { });
        g.Expect(true, "all pages dirty");
        g.Expect(false, "no faults");
        g.Result("dirtyPages", 512);
        g.Result("throughput", 3.5);
        g.Result("size", 768.MiB());
        g.Result("nan", double.NaN);
        g.Result("table", new StageSet());
        g.Result("unwritable", new Unwritable());
        var env = EnvironmentInfo.Capture("9.9.9", new Dictionary<string, string> { ["Mmu"] = "0.1.0" }, recipe);
        var record = RunRecord.Create(ctx, RecipeInfo.FromFile(recipe), env, error);
        var path = Path.Combine(_dir, "out", "run.json");
        record.Write(path);
        return (record, JsonDocument.Parse(File.ReadAllText(path)).RootElement);
    }

    private sealed class Unwritable
    {
        public int Boom => throw new InvalidOperationException("no");
        public override string ToString() => "unwritable thing";
    }

    [Fact]
    public void Json_has_every_field_camel_case()
    {
        var (_, j) = Run();
        foreach (var name in new[] { "recipe", "args", "argv", "testMode", "environment", "stages", "expectations", "results", "exitCode", "startedAt", "durationSeconds" })
            Assert.True(j.TryGetProperty(name, out _), $"missing '{name}'");
        Assert.False(j.TryGetProperty("error", out _)); // null fields are left out
    }

    [Fact]
    public void Recipe_path_and_sha256()
    {
        var (_, j) = Run();
        var recipe = j.GetProperty("recipe");
        Assert.Equal(Path.Combine(_dir, "r.csx"), recipe.GetProperty("path").GetString());
        // sha256 of "Expect(true, \"ok\");\n"
        var expected = Convert.ToHexStringLower(System.Security.Cryptography.SHA256.HashData("Expect(true, \"ok\");\n"u8));
        Assert.Equal(expected, recipe.GetProperty("sha256").GetString());
    }

    [Fact]
    public void Args_effective_values_and_argv()
    {
        var (_, j) = Run();
        var args = j.GetProperty("args");
        Assert.Equal("8G", args.GetProperty("memory").GetString());
        Assert.Equal("64M", args.GetProperty("inflate").GetString()); // test-mode default
        Assert.Equal("true", args.GetProperty("flag").GetString());
        Assert.Equal(["--memory", "8G", "--flag"], j.GetProperty("argv").EnumerateArray().Select(e => e.GetString()));
        Assert.True(j.GetProperty("testMode").GetBoolean());
    }

    [Fact]
    public void Stages_expectations_results_and_exit_code()
    {
        var (_, j) = Run();
        var stages = j.GetProperty("stages").EnumerateArray().ToArray();
        Assert.Equal(["populate", "verify"], stages.Select(s => s.GetProperty("name").GetString()));
        Assert.All(stages, s => Assert.True(s.GetProperty("seconds").GetDouble() >= 0));
        Assert.Equal(512, stages[0].GetProperty("counters").GetProperty("pages").GetInt64());
        Assert.Empty(stages[1].GetProperty("counters").EnumerateObject());

        var ex = j.GetProperty("expectations").EnumerateArray().ToArray();
        Assert.Equal("all pages dirty", ex[0].GetProperty("text").GetString());
        Assert.True(ex[0].GetProperty("passed").GetBoolean());
        Assert.False(ex[1].GetProperty("passed").GetBoolean());

        var results = j.GetProperty("results");
        Assert.Equal(512, results.GetProperty("dirtyPages").GetInt32());
        Assert.Equal(3.5, results.GetProperty("throughput").GetDouble());
        Assert.Equal(768L << 20, results.GetProperty("size").GetInt64());
        Assert.Equal("NaN", results.GetProperty("nan").GetString());
        Assert.Equal(JsonValueKind.Array, results.GetProperty("table").ValueKind);
        Assert.Equal("unwritable thing", results.GetProperty("unwritable").GetString());

        Assert.Equal(1, j.GetProperty("exitCode").GetInt32()); // "no faults" failed
    }

    [Fact]
    public void Error_decides_exit_code_and_is_recorded()
    {
        var (r, j) = Run(new RequirementMissingException("needs /dev/kvm"));
        Assert.Equal(4, r.ExitCode);
        Assert.Equal(4, j.GetProperty("exitCode").GetInt32());
        Assert.Equal("RequirementMissingException: needs /dev/kvm", j.GetProperty("error").GetString());
    }

    [Fact]
    public void Parses_back_into_a_record()
    {
        var (r, j) = Run();
        var back = RunRecord.Parse(j.GetRawText());
        Assert.Equal(r.Recipe, back.Recipe);
        Assert.Equal(r.Args, back.Args);
        Assert.Equal(r.Expectations, back.Expectations);
        Assert.Equal(r.Stages.Select(s => (s.Name, s.Seconds, s.Runs, s.Parent)), back.Stages.Select(s => (s.Name, s.Seconds, s.Runs, s.Parent)));
        Assert.Equal(512, back.Stages[0].Counters["pages"]);
        Assert.Equal(r.Environment.Memory, back.Environment.Memory);
        Assert.Equal(r.Environment.Kernel, back.Environment.Kernel);
        Assert.Equal(512, back.Results["dirtyPages"]!.GetValue<int>());
        Assert.Equal(r.ExitCode, back.ExitCode);
        Assert.Equal(r.StartedAt, back.StartedAt);
    }

    [Fact]
    public void Environment_in_json()
    {
        var (_, j) = Run();
        var env = j.GetProperty("environment");
        Assert.Equal("9.9.9", env.GetProperty("virtlab").GetString());
        Assert.Equal("0.1.0", env.GetProperty("plugins").GetProperty("Mmu").GetString());
        foreach (var name in new[] { "sdk", "os", "architecture", "runtime" })
            Assert.False(string.IsNullOrEmpty(env.GetProperty(name).GetString()), name);
        Assert.True(env.GetProperty("cores").GetInt32() > 0);
        if (OperatingSystem.IsLinux())
        {
            Assert.True(env.GetProperty("memory").GetInt64() > 0);
            Assert.False(string.IsNullOrEmpty(env.GetProperty("kernel").GetString()));
        }
    }
}
