using Spectre.Console;
using VirtLab.Sdk;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Rendering;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Cli;

/// <summary><c>virtlab plugins</c> and <c>virtlab doctor</c>.</summary>
public static class InfoCommands
{
    public static int Plugins(IReadOnlyList<string> pluginDirs)
    {
        var paths = new PluginSearchPaths(pluginDirs);
        var set = PluginSet.Load(paths, ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null);
        var console = Consoles.Out;
        if (set.All.Count == 0)
        {
            console.WriteLine($"No plugins found. SDK {SdkVersion.Text}. Searched: " + string.Join(", ", paths.Roots().Select(r => Directory.Exists(r) ? r : r + " (missing)")));
            console.WriteLine("A plugin folder is <root>/<AssemblyName>/<AssemblyName>.dll; a plugin project on the VirtLab.Sdk package copies itself to one on every build (docs/PLUGINS.md; virtlab new plugin NAME scaffolds one).");
            return ExitCodes.Success;
        }
        var table = new Table().Border(TableBorder.Rounded)
            .AddColumns("[bold]Name[/]", "[bold]Version[/]", "[bold]SDK[/]", "[bold]Global[/]", "[bold]Status[/]", "[bold]Path[/]");
        foreach (var p in set.All)
            table.AddRow(
                new Text(p.Name), new Text(p.Version ?? "-"), new Text(p.SdkVersion is { } v ? SdkVersion.Format(v) : "-"), new Text(p.GlobalName ?? "-"),
                p.IsLoaded ? new Markup("[green]loaded[/]") : new Markup("[red]error:[/] " + Markup.Escape(p.Error ?? "")),
                new Text(p.Path));
        console.Write(table);
        console.WriteLine($"SDK {SdkVersion.Text} (plugins must target major {SdkVersion.Major}). Searched: {string.Join(", ", paths.Roots())}");
        return ExitCodes.Success;
    }

    public static int Doctor(IReadOnlyList<string> pluginDirs)
    {
        var console = Consoles.Out;
        var env = EnvironmentInfo.Capture(RunCommand.VirtlabVersion, virtlabCommit: RunCommand.VirtlabCommit);
        var table = new Table().Border(TableBorder.Rounded).Title("Host").AddColumn("[bold]What[/]").AddColumn("[bold]Value[/]");
        void Row(string k, string? v) => table.AddRow(new Text(k), new Text(v ?? "unknown"));
        Row("virtlab", env.VirtlabCommit is { } commit ? $"{env.Virtlab} ({commit[..Math.Min(12, commit.Length)]})" : env.Virtlab);
        Row("SDK", $"{env.Sdk} (plugins must target major {SdkVersion.Major})");
        Row("runtime", env.Runtime);
        Row("OS", env.Os);
        Row("kernel", env.Kernel);
        Row("architecture", env.Architecture);
        Row("CPU", env.Cpu);
        Row("cores", env.Cores.ToString());
        Row("memory", env.Memory?.ToString());
        Row("plugin folders", string.Join(", ", new PluginSearchPaths(pluginDirs).Roots()));
        Row("recipe cache", RecipeCache.DefaultRoot());
        console.Write(table);
        try { ValueRenderer.Write(console, KvmSystem.Probe()); }
        catch (Exception e) { console.WriteLine($"KVM probe failed: {e.GetType().Name}: {e.Message}"); }
        return ExitCodes.Success;
    }
}
