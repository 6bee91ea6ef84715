using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;
using Xunit;

namespace VirtLab.Shell.Tests;

public sealed class PluginHostTests
{
    /// <summary>The plugins under <paramref name="root"/> alone; <paramref name="only"/> as <see cref="PluginSet.Load"/>'s.</summary>
    internal static PluginSet Load(string root, Func<string, bool>? only = null) =>
        PluginSet.Load(new PluginSearchPaths([root], IncludeEnvironment: false, IncludeBuiltIn: false),
            ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null, only);

    private static PluginInfo Only(PluginSet set, string name) => set.All.Single(p => p.Name == name);

    [Fact]
    public void Loads_a_good_plugin_with_its_metadata()
    {
        using var tmp = new TempDir();
        PluginCompiler.Build(tmp.Path, "Good", PluginCompiler.Simple("Good", "Good"), version: "2.3.4-beta");
        var p = Only(Load(tmp.Path), "Good");
        Assert.True(p.IsLoaded, p.Error);
        Assert.Equal("2.3.4-beta", p.Version);
        Assert.Equal(VirtLab.Sdk.SdkVersion.Major, p.SdkVersion!.Major);
        Assert.Equal("Good", p.GlobalName);
        Assert.Equal("GoodNs.Api", p.GlobalType!.FullName);
        Assert.Equal("test plugin Good", p.Description);
        // Its own context, but the SDK type identity is shared with the shell.
        Assert.NotSame(System.Runtime.Loader.AssemblyLoadContext.Default, System.Runtime.Loader.AssemblyLoadContext.GetLoadContext(p.Assembly!));
        Assert.Same(typeof(VirtLab.Sdk.Plugins.VirtLabPlugin).Assembly, p.Assembly!.GetReferencedAssemblies()
            .Where(a => a.Name == "VirtLab.Sdk").Select(a => p.LoadContext!.LoadFromAssemblyName(a)).Single());
    }

    [Fact]
    public void Each_plugin_gets_its_own_copy_of_a_private_dependency()
    {
        using var tmp = new TempDir();
        foreach (var (name, value) in new[] { ("PA", 1), ("PB", 2) })
        {
            var dir = Path.Combine(tmp.Path, name);
            Directory.CreateDirectory(dir);
            var helper = Path.Combine(dir, "Helper.dll");
            PluginCompiler.Compile(helper, "Helper", $"namespace Helper; public static class H {{ public static int Value => {value}; }}");
            PluginCompiler.Compile(Path.Combine(dir, name + ".dll"), name,
                PluginCompiler.Simple(name, name, create: "new Api()").Replace("public int Answer => 42;", "public int Answer => Helper.H.Value;"),
                PluginCompiler.SdkPath, helper);
        }
        var set = Load(tmp.Path);
        Assert.All(set.All, p => Assert.True(p.IsLoaded, p.Error));
        var s = new InteractiveSession(set, new RecipeContext());
        Assert.Equal(12, s.Submit("PA.Answer * 10 + PB.Answer").Value);
        Assert.DoesNotContain(System.Runtime.Loader.AssemblyLoadContext.Default.Assemblies, a => a.GetName().Name == "Helper");
    }

    [Fact]
    public void Every_load_error_is_reported_and_the_others_still_load()
    {
        using var tmp = new TempDir();
        // not a .NET assembly
        tmp.File("Garbage/Garbage.dll", "this is not a PE file at all");
        // an assembly without a plugin type
        PluginCompiler.Build(tmp.Path, "NoPlugin", "namespace X; public class NotAPlugin { public VirtLab.Sdk.Plugins.PluginContext? C; }");
        // an assembly that does not even reference the SDK
        PluginCompiler.Build(tmp.Path, "NoSdk", "namespace Y; public class Nothing {}");
        // built against the next SDK major
        int nextMajor = VirtLab.Sdk.SdkVersion.Major + 1;
        var fakeSdk = Path.Combine(tmp.Path, "fake", "VirtLab.Sdk.dll");
        Directory.CreateDirectory(Path.GetDirectoryName(fakeSdk)!);
        PluginCompiler.Compile(fakeSdk, "VirtLab.Sdk", $$"""
            [assembly: System.Reflection.AssemblyVersion("{{nextMajor}}.0.0.0")]
            namespace VirtLab.Sdk.Plugins { public abstract class VirtLabPlugin { } }
            """);
        PluginCompiler.Build(tmp.Path, "Future", "public sealed class P : VirtLab.Sdk.Plugins.VirtLabPlugin { }", sdkPath: fakeSdk);
        // built against a later minor of this major (it may use members this shell lacks)
        var nextMinor = Path.Combine(tmp.Path, "fake-minor", "VirtLab.Sdk.dll");
        Directory.CreateDirectory(Path.GetDirectoryName(nextMinor)!);
        PluginCompiler.Compile(nextMinor, "VirtLab.Sdk", $$"""
            [assembly: System.Reflection.AssemblyVersion("{{VirtLab.Sdk.SdkVersion.Major}}.{{VirtLab.Sdk.SdkVersion.Current.Minor + 1}}.0.0")]
            namespace VirtLab.Sdk.Plugins { public abstract class VirtLabPlugin { } }
            """);
        PluginCompiler.Build(tmp.Path, "NextMinor", "public sealed class P : VirtLab.Sdk.Plugins.VirtLabPlugin { }", sdkPath: nextMinor);
        // initialisation throws (in CreateGlobal, and in the constructor)
        PluginCompiler.Build(tmp.Path, "Throws", PluginCompiler.Simple("Throws", "Throws", create: "throw new System.InvalidOperationException(\"no device\")"));
        PluginCompiler.Build(tmp.Path, "CtorThrows", PluginCompiler.Simple("CtorThrows", "CtorThrows").Replace(
            "public sealed class ThePlugin : VirtLabPlugin<Api>\n{", "public sealed class ThePlugin : VirtLabPlugin<Api>\n{ public ThePlugin() => throw new System.IO.IOException(\"ctor\");"));
        // two plugins claiming one global
        PluginCompiler.Build(tmp.Path, "A1", PluginCompiler.Simple("A1", "Shared"));
        PluginCompiler.Build(tmp.Path, "A2", PluginCompiler.Simple("A2", "Shared"));
        // invalid and reserved global names
        PluginCompiler.Build(tmp.Path, "BadName", PluginCompiler.Simple("BadName", "not valid"));
        PluginCompiler.Build(tmp.Path, "Keyword", PluginCompiler.Simple("Keyword", "class"));
        PluginCompiler.Build(tmp.Path, "Reserved", PluginCompiler.Simple("Reserved", "Args"));
        // a folder without its dll
        Directory.CreateDirectory(Path.Combine(tmp.Path, "Empty"));
        // and one good plugin
        PluginCompiler.Build(tmp.Path, "Good", PluginCompiler.Simple("Good", "Good"));

        var set = Load(tmp.Path);
        var missing = PluginSet.Load(new PluginSearchPaths([Path.Combine(tmp.Path, "nope")], false, false)).All.Single();
        Assert.Equal("plugin folder not found (from --plugins or VIRTLAB_PLUGINS)", missing.Error);
        Assert.Contains("not a .NET assembly", Only(set, "Garbage").Error);
        Assert.Contains("no plugin type", Only(set, "NoPlugin").Error);
        Assert.Contains("does not reference VirtLab.Sdk", Only(set, "NoSdk").Error);
        Assert.Contains($"SDK major mismatch: built against VirtLab.Sdk {nextMajor}.x", Only(set, "Future").Error);
        Assert.StartsWith($"built against a newer VirtLab.Sdk ({VirtLab.Sdk.SdkVersion.Major}.{VirtLab.Sdk.SdkVersion.Current.Minor + 1}) than this shell provides ({VirtLab.Sdk.SdkVersion.Text})",
            Only(set, "NextMinor").Error);
        Assert.Equal("initialisation threw InvalidOperationException: no device", Only(set, "Throws").Error);
        Assert.Equal("initialisation threw IOException: ctor", Only(set, "CtorThrows").Error);
        Assert.True(Only(set, "A1").IsLoaded);
        Assert.Contains("global 'Shared' is already provided by plugin 'A1'", Only(set, "A2").Error);
        Assert.Contains("invalid global name 'not valid'", Only(set, "BadName").Error);
        Assert.Contains("invalid global name 'class'", Only(set, "Keyword").Error);
        Assert.Contains("global name 'Args' is taken by the script globals", Only(set, "Reserved").Error);
        Assert.Contains("no Empty.dll in the plugin folder", Only(set, "Empty").Error);
        Assert.True(Only(set, "Good").IsLoaded);
        Assert.Equal(["A1", "Good"], set.Loaded.Select(p => p.Name).Order());

        // The session built on this set works, with both good globals.
        var session = new InteractiveSession(set, new RecipeContext());
        Assert.Equal(84, session.Submit("Good.Answer + Shared.Answer").Value);
    }

    [Fact]
    public void Plugins_command_lists_status_and_errors_and_run_survives_a_broken_plugin()
    {
        using var tmp = new TempDir();
        var plugins = Path.Combine(tmp.Path, "plugins");
        PluginCompiler.Build(plugins, "Good", PluginCompiler.Simple("Good", "Good"), version: "1.5.0");
        PluginCompiler.Build(plugins, "Throws", PluginCompiler.Simple("Throws", "Throws", create: "throw new System.Exception(\"kaput\")"));
        var list = Virtlab.Run(null, tmp.Path, "plugins", "--plugins", plugins);
        Assert.True(list.ExitCode == 0, list.ToString());
        // name, version, SDK built against, global, status and path, on the plugin's own row
        var good = list.Stdout.Split('\n').Where(l => l.Contains("│ Good ")).ToArray();
        Assert.True(good.Length == 1, list.Stdout);
        Assert.Matches($@"│ Good\s+│ 1\.5\.0\s+│ {VirtLab.Sdk.SdkVersion.Major}[.\d]*\s+│ Good\s+│ loaded\s+│ {System.Text.RegularExpressions.Regex.Escape(Path.Combine(plugins, "Good"))}", good[0]);
        Assert.Contains("kaput", list.Stdout);
        Assert.DoesNotContain("\u001b[", list.Stdout); // redirected: no ANSI

        var recipe = tmp.File("r.csx", "Result(\"g\", Good.Hello(\"vm\"));");
        var run = Virtlab.Run(null, tmp.Path, new Dictionary<string, string> { ["VIRTLAB_PLUGINS"] = plugins }, "run", recipe);
        Assert.True(run.ExitCode == 0, run.ToString());
        Assert.Contains("g = \"hello vm\"", run.Stdout);
        Assert.Contains("plugin Throws not loaded", run.Stderr);
    }

    [Fact]
    public void Plugins_load_in_McMaster_load_contexts_with_the_contract_assemblies_shared()
    {
        using var tmp = new TempDir();
        PluginCompiler.Build(tmp.Path, "Mc", PluginCompiler.Simple("Mc", "Mc"));
        var p = Only(Load(tmp.Path), "Mc");
        Assert.True(p.IsLoaded, p.Error);
        Assert.Equal("McMaster.NETCore.Plugins.Loader.ManagedLoadContext", p.LoadContext!.GetType().FullName);
        foreach (var shared in new[] { "VirtLab.Sdk", "Spectre.Console", "Iced" })
            Assert.Same(System.Runtime.Loader.AssemblyLoadContext.Default, System.Runtime.Loader.AssemblyLoadContext.GetLoadContext(
                p.LoadContext.LoadFromAssemblyName(new System.Reflection.AssemblyName(shared))));
    }

    [Fact]
    public void A_plugin_has_its_own_name_and_version_from_its_project()
    {
        using var tmp = new TempDir();
        // What Plugins.Directory.Build.targets gives a project Plugins.Hello with <Version>2.5.0</Version>, built from git.
        PluginCompiler.Build(tmp.Path, "Plugins.Hello", PluginCompiler.Simple("Hello", "Hello").Replace("using VirtLab.Sdk.Plugins;", "using VirtLab.Sdk.Plugins;\n[assembly: System.Reflection.AssemblyProduct(\"Hello\")]"),
            version: "2.5.0+3fb3795e0123456789abcdef0123456789abcdef");
        // No Product of its own: the assembly name.
        PluginCompiler.Build(tmp.Path, "Plain", PluginCompiler.Simple("Plain", "Plain"), version: "0.3.0");
        var set = Load(tmp.Path);
        var hello = set.All.Single(p => p.AssemblyName == "Plugins.Hello");
        Assert.True(hello.IsLoaded, hello.Error);
        Assert.Equal("Hello", hello.Name);
        Assert.Equal("2.5.0", hello.Version);
        Assert.Matches("^[0-9a-f]{8}$", hello.Build);
        var plain = Only(set, "Plain");
        Assert.Equal("0.3.0", plain.Version);
        Assert.NotEqual(hello.Build, plain.Build);
    }

    [Fact]
    public void A_plugin_built_for_another_configuration_is_found_and_the_newest_build_wins()
    {
        using var tmp = new TempDir();
        // The build's layout: the shell in bin/VirtLab.Shell/release/, a plain `dotnet build` copies to debug/plugins/.
        var shells = Path.Combine(tmp.Path, "bin", "VirtLab.Shell");
        var release = Path.Combine(shells, "release");
        Directory.CreateDirectory(release);
        var debugOnly = PluginCompiler.Build(Path.Combine(shells, "debug", "plugins"), "DebugOnly", PluginCompiler.Simple("DebugOnly", "DebugOnly"), version: "1.0.0");
        var older = PluginCompiler.Build(Path.Combine(release, "plugins"), "Both", PluginCompiler.Simple("Both", "Both"), version: "1.0.0");
        var newer = PluginCompiler.Build(Path.Combine(shells, "debug", "plugins"), "Both", PluginCompiler.Simple("Both", "Both"), version: "1.1.0");
        File.SetLastWriteTimeUtc(Path.Combine(older, "Both.dll"), DateTime.UtcNow.AddMinutes(-5));

        var paths = new PluginSearchPaths([], IncludeEnvironment: false) { ShellDirectory = release };
        Assert.Equal([Path.Combine(release, "plugins"), Path.Combine(shells, "debug", "plugins")], paths.Roots());
        var set = PluginSet.Load(paths, ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null);
        Assert.True(Only(set, "DebugOnly").IsLoaded, Only(set, "DebugOnly").Error);
        Assert.Equal(Path.Combine(debugOnly, "DebugOnly.dll"), Only(set, "DebugOnly").Path);
        var both = set.All.Where(p => p.Name == "Both").ToList();
        Assert.Equal(2, both.Count);
        Assert.Equal("1.1.0", both.Single(p => p.IsLoaded).Version);
        Assert.Equal(Path.Combine(newer, "Both.dll"), both.Single(p => p.IsLoaded).Path);
        var ignored = both.Single(p => !p.IsLoaded);
        Assert.Equal(Path.Combine(older, "Both.dll"), ignored.Path);
        Assert.StartsWith("an older build of 'Both'", ignored.Error);
        Assert.EndsWith($"the newest one is loaded, from {Path.Combine(newer, "Both.dll")}", ignored.Error);
    }
}
