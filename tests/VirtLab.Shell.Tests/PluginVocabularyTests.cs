using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>What a source must name to reach a plugin, read from the plugin's metadata without loading it.</summary>
public sealed class PluginVocabularyTests
{
    private static PluginSet Discover(string root) => PluginHostTests.Load(root, only: _ => false); // found, none loaded

    [Fact]
    public void Reads_the_global_its_public_types_and_extension_methods_without_loading_the_plugin()
    {
        using var tmp = new TempDir();
        PluginCompiler.Build(tmp.Path, "Voc", PluginCompiler.Simple("Voc", "Voc") + """

            public static class VocExtensions { public static int Twice(this int x) => 2 * x; private static int Hidden() => 0; }
            public sealed class ProbeAttribute : System.Attribute { }
            internal sealed class Internal { }
            """);
        var names = PluginVocabulary.Read(Path.Combine(tmp.Path, "Voc", "Voc.dll"));
        Assert.NotNull(names);
        foreach (var n in new[] { "Voc", "Api", "ThePlugin", "VocExtensions", "Twice", "ProbeAttribute", "Probe" }) Assert.Contains(n, names);
        foreach (var n in new[] { "Hidden", "Internal", "Answer", "Hello" }) Assert.DoesNotContain(n, names);

        var set = Discover(tmp.Path);
        Assert.Equal(PluginStatus.Unused, Assert.Single(set.All).Status); // found, never loaded
        Assert.False(PluginVocabulary.Names("var x = 6 * 7; Result(\"answer\", x);", set));
        Assert.True(PluginVocabulary.Names("Result(\"a\", Voc.Answer);", set));
        Assert.True(PluginVocabulary.Names("var n = 3.Twice();", set));
        Assert.True(PluginVocabulary.Names("VocNs.Api api = null;", set));
        Assert.Equal(PluginStatus.Unused, set.All[0].Status);
    }

    [Fact]
    public void A_block_bodied_getter_of_a_debug_build_is_read_too()
    {
        using var tmp = new TempDir();
        PluginCompiler.Build(tmp.Path, "Blk", PluginCompiler.Simple("Blk", "Blocky")
            .Replace("public override string GlobalName => \"Blocky\";", "public override string GlobalName { get { return \"Blocky\"; } }"));
        Assert.Contains("Blocky", PluginVocabulary.Read(Path.Combine(tmp.Path, "Blk", "Blk.dll"))!);
    }

    [Fact]
    public void A_global_name_that_is_not_a_constant_makes_every_source_count_as_naming_the_plugin()
    {
        using var tmp = new TempDir();
        PluginCompiler.Build(tmp.Path, "Dyn", PluginCompiler.Simple("Dyn", "Dyn")
            .Replace("public override string GlobalName => \"Dyn\";", "public override string GlobalName => \"D\" + \"yn\".ToString();"));
        Assert.Null(PluginVocabulary.Read(Path.Combine(tmp.Path, "Dyn", "Dyn.dll")));
        Assert.True(PluginVocabulary.Names("Result(\"answer\", 42);", Discover(tmp.Path)));
    }

    [Fact]
    public void The_built_in_plugins_globals_are_read_from_their_builds()
    {
        // The shell's own build output (beside this test's, same configuration) holds the in-tree plugins.
        var testOutput = Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory);
        var shell = Path.GetFullPath(Path.Combine(testOutput, "..", "..", "VirtLab.Shell", Path.GetFileName(testOutput)));
        var set = PluginSet.Load(new PluginSearchPaths([], IncludeEnvironment: false) { ShellDirectory = shell },
            ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null, only: _ => false);
        var globals = set.All.Where(p => p.Status == PluginStatus.Unused).Select(p => PluginVocabulary.Read(p.Path)).ToList();
        Assert.NotEmpty(globals);
        Assert.All(globals, Assert.NotNull);
        foreach (var g in new[] { "Mmu", "Vfio", "Vdpa", "Balloon" }) Assert.Contains(globals, n => n!.Contains(g));
    }
}
