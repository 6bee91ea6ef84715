using Xunit;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>The REPL host's preamble compiled before its plugins load, from the last session's inputs.</summary>
public sealed class PreparedPreambleTests
{
    private static PluginSet Load(string root) =>
        PluginSet.Load(new PluginSearchPaths([root], IncludeEnvironment: false, IncludeBuiltIn: false), ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null);

    [Fact]
    public void A_session_takes_the_preamble_compiled_ahead_and_its_plugin_global_works()
    {
        var root = Directory.CreateTempSubdirectory("virtlab-prepared-").FullName;
        try
        {
            var plugins = Load(Path.GetDirectoryName(TestPlugin.Build(Path.Combine(root, "plugins"), "1.0.0", "hello"))!);
            Assert.Single(plugins.Loaded);
            var record = Path.Combine(root, "record.txt");
            Assert.Null(PreparedPreamble.Start(record, typeof(RecipeGlobals), root)); // nothing remembered yet

            PreparedPreamble.Remember(record, CompileInputs.From(plugins));
            var prepared = PreparedPreamble.Start(record, typeof(RecipeGlobals), root);
            Assert.NotNull(prepared);
            var session = new InteractiveSession(plugins, new RecipeContext(), root, prepared: prepared);
            Assert.True(session.UsedPreparedPreamble);
            Assert.Empty(session.PreambleDiagnostics);
            Assert.True(session.Submit("var who = \"you\";").Succeeded);
            var result = session.Submit("Greeter.Hello(who)");
            Assert.True(result.Succeeded, string.Join("\n", result.Diagnostics) + result.Exception);
            Assert.Equal("hello you", result.Value);

            // Another folder (the base of #load and #r): not taken, the session compiles its own preamble.
            var elsewhere = new InteractiveSession(plugins, new RecipeContext(), Path.GetTempPath(),
                prepared: PreparedPreamble.Start(record, typeof(RecipeGlobals), root));
            Assert.False(elsewhere.UsedPreparedPreamble);
            Assert.Equal("hello me", elsewhere.Submit("Greeter.Hello(\"me\")").Value);

            // A rebuilt plugin file: nothing is compiled ahead.
            var dll = plugins.Loaded.Single().Path;
            File.SetLastWriteTimeUtc(dll, File.GetLastWriteTimeUtc(dll).AddSeconds(5));
            Assert.Null(PreparedPreamble.Start(record, typeof(RecipeGlobals), root));
        }
        finally { try { Directory.Delete(root, recursive: true); } catch (IOException) { } catch (UnauthorizedAccessException) { } }
    }
}
