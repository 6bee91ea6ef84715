using System.Diagnostics;
using VirtLab.Shell.Scripting;
using Xunit;

namespace VirtLab.Shell.Tests;

public sealed class RecipeCacheTests
{
    private static CompiledRecipe Sample(string source) =>
        new([new CompiledRecipe.Submission("Script", [1, 2, 3]), new CompiledRecipe.Submission(null, [])],
            [new CompiledRecipe.FileHash(source, RecipeCache.Hash(source))], [], ["a.csx(1,1): warning CS0168: x"]);

    [Fact]
    public void An_entry_round_trips_and_a_damaged_one_is_a_miss()
    {
        using var tmp = new TempDir();
        var source = tmp.File("r.csx", "1");
        var cache = new RecipeCache(Path.Combine(tmp.Path, "cache"));
        cache.Store("k", Sample(source));
        var hit = cache.TryGet("k")!;
        Assert.Equal([1, 2, 3], hit.Submissions[0].Image);
        Assert.Equal("Script", hit.Submissions[0].TypeName);
        Assert.Null(hit.Submissions[1].TypeName);
        Assert.Equal(["a.csx(1,1): warning CS0168: x"], hit.Warnings);

        // A submission image that is not the one the manifest recorded (torn copy, another writer) is a miss.
        File.WriteAllBytes(Path.Combine(cache.Root, "k", "0.dll"), [1, 2, 4]);
        Assert.Null(cache.TryGet("k"));
        // So is a changed source, and a store over the stale entry replaces it.
        cache.Store("k", Sample(source));
        Assert.NotNull(cache.TryGet("k"));
        File.WriteAllText(source, "2");
        Assert.Null(cache.TryGet("k"));
        cache.Store("k", Sample(source));
        Assert.NotNull(cache.TryGet("k"));
        Assert.DoesNotContain(Directory.GetDirectories(cache.Root), d => Path.GetFileName(d).StartsWith('.')); // no leftovers
    }

    [Fact]
    public async Task Concurrent_first_runs_of_one_recipe_all_succeed_and_leave_one_good_entry()
    {
        using var tmp = new TempDir();
        tmp.File("lib/_l.csx", "int Twice(int x) => 2 * x;\n");
        var recipe = tmp.File("c.csx", "#load \"lib/_l.csx\"\nResult(\"v\", Twice(21));\n");
        var cache = Path.Combine(tmp.Path, "cache");
        var runs = Enumerable.Range(0, 4).Select(_ => Task.Run(() => Virtlab.Run(cache, tmp.Path, "run", recipe))).ToArray();
        foreach (var r in await Task.WhenAll(runs))
        {
            Assert.True(r.ExitCode == 0, r.ToString());
            Assert.Equal("v = 42\n", r.Stdout);
        }
        var entries = Directory.GetDirectories(cache);
        Assert.Single(entries); // one entry, no temporary folders left behind
        var next = Virtlab.Run(cache, tmp.Path, new Dictionary<string, string> { ["VIRTLAB_VERBOSE"] = "1" }, "run", recipe);
        Assert.Contains("recipe cache hit", next.Stderr);
        Assert.Equal("v = 42\n", next.Stdout);
    }

    [Theory]
    [InlineData("Result(\"answer\", 6 * 7);", true)]
    [InlineData("var s = 8.MiB(); Stage(\"x\", () => s.Bytes * 2);", true)]
    [InlineData("var vm = Vm.Create(8.MiB(), 1);", false)]
    [InlineData("var b = new DirtyBitmap(64);", false)]
    [InlineData("#r \"nuget: Foo, 1.0.0\"\nResult(\"a\", 1);", false)]
    public void A_recipe_naming_no_machine_type_looks_cold(string source, bool cold) =>
        Assert.Equal(cold, RecipeCache.LooksCold(source, VirtLab.Shell.PluginHost.PluginSet.Empty));
}
