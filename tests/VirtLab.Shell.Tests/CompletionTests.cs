using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;
using Xunit;

namespace VirtLab.Shell.Tests;

public sealed class PluginGlobalTests
{
    [Fact]
    public void Plugin_global_is_typed_and_completes()
    {
        using var tmp = new TempDir();
        PluginCompiler.Build(tmp.Path, "Mmu", PluginCompiler.Simple("Mmu", "Mmu", answer: 7));
        var set = PluginSet.Load(new PluginSearchPaths([tmp.Path], false, false), ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null);
        var s = new InteractiveSession(set, new RecipeContext());
        s.EnsurePreamble();
        Assert.Empty(s.PreambleDiagnostics);

        var names = s.Complete("Mm", 2);
        Assert.Contains(names, c => c.Text == "Mmu" && c.Kind == CompletionKind.Variable && c.Detail.Contains("Api"));
        var members = s.Complete("var h = Mmu.He", 14);
        Assert.Equal("Hello", Assert.Single(members).Text);
        Assert.Contains(s.Complete("Mmu.", 4), c => c.Text == "Answer" && c.Kind == CompletionKind.Property);

        // Strongly typed: members bind statically, and the plugin's namespace is imported.
        Assert.Equal("hello x", s.Submit("Mmu.Hello(\"x\")").Value);
        Assert.Equal(typeof(int), s.Submit("Mmu.Answer").Value!.GetType());
        Assert.True(s.Submit("Api a = Mmu; a.Answer").Succeeded);
        // The preamble is not a user submission.
        Assert.Equal(["Mmu.Hello(\"x\")", "Mmu.Answer", "Api a = Mmu; a.Answer"], s.Submissions);
    }
}
