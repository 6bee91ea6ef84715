using Xunit;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Tests;

public sealed class InteractiveSessionTests
{
    private static InteractiveSession NewSession(PluginSet? plugins = null) => new(plugins ?? PluginSet.Empty, new RecipeContext());

    [Fact]
    public void State_carries_across_submissions_and_failures_do_not_chain()
    {
        var s = NewSession();
        Assert.True(s.Submit("var x = 40;").Succeeded);
        var r = s.Submit("x + 2");
        Assert.True(r.Succeeded);
        Assert.True(r.HasValue);
        Assert.Equal(42, r.Value);

        var bad = s.Submit("var y = undefinedName;");
        Assert.False(bad.Compiled);
        Assert.Equal("(1,9): error CS0103: The name 'undefinedName' does not exist in the current context", bad.Errors.Single().Formatted);

        var thrown = s.Submit("x = 7; var z = 1; throw new InvalidOperationException(\"boom\");");
        Assert.True(thrown.Compiled);
        Assert.IsType<InvalidOperationException>(thrown.Exception);
        // z was declared by the thrown submission: not visible; x kept the assignment made before the throw.
        Assert.False(s.Submit("z").Compiled);
        Assert.Equal(7, s.Submit("x").Value);

        Assert.True(s.Submit("using System.Text;").Succeeded); // nothing to run, but it chains
        Assert.Equal("ab", s.Submit("new StringBuilder(\"a\").Append('b').ToString()").Value);

        var noValue = s.Submit("x++;");
        Assert.True(noValue.Succeeded);
        Assert.False(noValue.HasValue);
        Assert.Equal(["var x = 40;", "x + 2", "x", "using System.Text;", "new StringBuilder(\"a\").Append('b').ToString()", "x++;"], s.Submissions);
    }

    [Fact]
    public void Globals_and_default_imports_are_available()
    {
        var s = NewSession();
        var r = s.Submit("Result(\"n\", 1.MiB()); Expect(true, \"ok\"); TestMode");
        Assert.True(r.Succeeded, string.Join("\n", r.Diagnostics) + r.Exception);
        Assert.Equal(false, r.Value);
        Assert.Single(s.Globals.Context.Results);
        Assert.Equal(3, s.Submit("new List<int> { 1, 2, 3 }.Where(i => i > 0).Count()").Value);
        Assert.Equal(5, s.Submit("await Task.FromResult(5)").Value);
        var nul = s.Submit("null");
        Assert.True(nul.HasValue && nul.Value is null);
        Assert.True(s.Submit("class P { public int X = 3; }").Succeeded);
        Assert.Equal(3, s.Submit("new P().X").Value);
        Assert.False(s.Submit("Console.WriteLine()").HasValue); // void
    }

    [Fact]
    public void Completes_members_of_an_earlier_variable()
    {
        var s = NewSession();
        Assert.True(s.Submit("var text = \"hello\"; var list = new List<int>();").Succeeded);
        var items = s.Complete("text.Sub", 8);
        Assert.Contains(items, c => c.Text == "Substring" && c.Kind == CompletionKind.Method && c.ReplaceStart == 5 && c.ReplaceLength == 3);
        Assert.DoesNotContain(items, c => c.Text == "Length"); // prefix filter
        var ext = s.Complete("list.", 5);
        Assert.Contains(ext, c => c.Text == "Add");
        Assert.Contains(ext, c => c.Text == "Where" && c.Kind == CompletionKind.ExtensionMethod);
        Assert.DoesNotContain(ext, c => c.Text == "ReferenceEquals"); // statics are not offered on an instance
    }

    [Fact]
    public void Completes_namespaces_conditional_access_and_nothing_in_comments_or_strings()
    {
        var s = NewSession();
        s.Submit("string? maybe = \"x\";");
        Assert.Contains(s.Complete("System.Coll", 11), c => c.Text == "Collections" && c.Kind == CompletionKind.Namespace);
        Assert.Contains(s.Complete("maybe?.Len", 10), c => c.Text == "Length");
        Assert.Empty(s.Complete("// maybe.Len", 12));
        Assert.Empty(s.Complete("var t = \"maybe.Len", 18));
        Assert.Contains(s.Complete("var l = new Li", 14), c => c.Text == "List" && c.Kind == CompletionKind.Type);
        Assert.Contains(s.Complete("var m = 3.Gi", 12), c => c.Text == "GiB" && c.Kind == CompletionKind.ExtensionMethod);
    }

    [Fact]
    public void Completes_names_in_scope()
    {
        var s = NewSession();
        s.Submit("var memorySize = 4.GiB();");
        var items = s.Complete("var a = mem", 11);
        Assert.Contains(items, c => c.Text == "memorySize" && c.Kind == CompletionKind.Variable);
        var g = s.Complete("Exp", 3);
        Assert.Contains(g, c => c.Text == "Expect");
        var kw = s.Complete("whi", 3);
        Assert.Contains(kw, c => c.Text == "while" && c.Kind == CompletionKind.Keyword);
        var types = s.Complete("Size.", 5);
        Assert.Contains(types, c => c.Text == "Parse");
        Assert.DoesNotContain(s.Complete("", 0), c => c.Text.StartsWith("__"));
    }

    [Fact]
    public void The_plugin_preamble_joins_the_chain_when_a_submission_first_names_a_global()
    {
        using var tmp = new TempDir();
        PluginCompiler.Build(tmp.Path, "Late", PluginCompiler.Simple("Late", "Late"));
        var plugins = PluginSet.Load(new PluginSearchPaths([tmp.Path], false, false), ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null);
        Assert.True(plugins.All.Single().IsLoaded, plugins.All.Single().Error);

        // Names no global: compiled and run before the preamble, which then joins (as the host does after a reply).
        var s = new InteractiveSession(plugins, new RecipeContext(), tmp.Path);
        var first = s.Submit("var x = 6 * 7; x");
        Assert.True(first.Succeeded, string.Join("\n", first.Diagnostics.Select(d => d.Formatted)) + first.Exception);
        Assert.Equal(42, first.Value);
        var second = s.Submit("Late.Answer + x - 42");
        Assert.True(second.Succeeded, string.Join("\n", second.Diagnostics.Select(d => d.Formatted)) + second.Exception);
        Assert.Equal(42, second.Value);
        Assert.Equal(["var x = 6 * 7; x", "Late.Answer + x - 42"], s.Submissions);

        // A first submission that names a global gets the preamble first; a user variable of that name hides the global.
        var named = new InteractiveSession(plugins, new RecipeContext(), tmp.Path);
        Assert.Equal("hello you", named.Submit("Late.Hello(\"you\")").Value);
        Assert.Equal(5, named.Submit("var Late = 5; Late").Value);

        // Named only in a #load-ed file: the preamble comes first too.
        File.WriteAllText(Path.Combine(tmp.Path, "lib.csx"), "int Answer() => Late.Answer;\n");
        var loaded = new InteractiveSession(plugins, new RecipeContext(), tmp.Path);
        var viaLoad = loaded.Submit("#load \"lib.csx\"\nAnswer()");
        Assert.True(viaLoad.Succeeded, string.Join("\n", viaLoad.Diagnostics.Select(d => d.Formatted)) + viaLoad.Exception);
        Assert.Equal(42, viaLoad.Value);

        var ensured = new InteractiveSession(plugins, new RecipeContext(), tmp.Path);
        ensured.EnsurePreamble();
        Assert.Empty(ensured.PreambleDiagnostics);
        Assert.Equal(42, ensured.Submit("Late.Answer").Value);
    }
}

/// <summary>
/// The warm completion path (after <see cref="InteractiveSession.WarmUp"/>) gives the same, right answers every time.
/// No timed assertion (speed is measured by the bench recipes): the warm cost is written to the test output only.
/// </summary>
public sealed class CompletionWarmTests(Xunit.Abstractions.ITestOutputHelper output)
{
    [Fact]
    public void Warm_completion_is_stable_and_right()
    {
        var s = new InteractiveSession(PluginSet.Empty, new RecipeContext());
        Assert.True(s.Submit("var text = \"hello\";").Succeeded);
        s.WarmUp();
        Assert.Contains(s.Complete("text.", 5), c => c.Text == "Length");
        var best = double.MaxValue;
        var inScope = double.MaxValue;
        for (int i = 0; i < 3; i++)
        {
            var sw = System.Diagnostics.Stopwatch.StartNew();
            var members = s.Complete("text.Su", 7);
            best = Math.Min(best, sw.Elapsed.TotalMilliseconds);
            Assert.Contains(members, c => c.Text == "Substring" && c.Kind == CompletionKind.Method && c.ReplaceStart == 5 && c.ReplaceLength == 2);
            Assert.DoesNotContain(members, c => c.Text == "Length");
            sw.Restart();
            var names = s.Complete("var q = te", 10);
            inScope = Math.Min(inScope, sw.Elapsed.TotalMilliseconds);
            Assert.Contains(names, c => c.Text == "text" && c.Kind == CompletionKind.Variable);
        }
        output.WriteLine($"warm completion: member {best:0.0} ms, in scope {inScope:0.0} ms");
    }
}
