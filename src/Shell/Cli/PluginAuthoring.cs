using System.Reflection;
using System.Text;
using System.Text.Json;
using VirtLab.Sdk;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Cli;

/// <summary>
/// What a plugin or recipe author runs outside this repository (docs/PLUGINS.md): <c>virtlab pack-sdk DIR</c> (the
/// SDK package into a local package folder, so building a plugin needs no network), <c>virtlab new plugin NAME</c> (a
/// plugin, its tests and a recipe, built against that package) and <c>virtlab init [DIR]</c> (editor support for .csx).
/// </summary>
public static class PluginAuthoring
{
    /// <summary>The SDK package's version: VirtLab.Sdk's informational version without the "+commit" suffix.</summary>
    public static string SdkPackageVersion =>
        (typeof(SdkVersion).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? SdkVersion.Current.ToString(3))
        .Split('+')[0];

    /// <summary>The package the build put beside the shell (sdk/VirtLab.Sdk.&lt;version&gt;.nupkg).</summary>
    public static string SdkPackagePath => Path.Combine(VirtLab.Shell.PluginHost.PluginSearchPaths.BuildOutput, "sdk", $"VirtLab.Sdk.{SdkPackageVersion}.nupkg");

    // ---- pack-sdk ----

    public static int PackSdk(string dir)
    {
        try
        {
            var written = WriteSdkPackage(dir);
            Console.Out.WriteLine($"{written} (VirtLab.Sdk {SdkPackageVersion}, SDK major {SdkVersion.Major})");
            Console.Out.WriteLine($"Use it as a package source: <add key=\"virtlab-sdk\" value=\"{Path.GetFullPath(dir)}\" /> in nuget.config.");
            return ExitCodes.Success;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FileNotFoundException)
        {
            Console.Error.WriteLine($"virtlab pack-sdk: {e.Message}");
            return ExitCodes.Failure;
        }
    }

    /// <summary>Copies the SDK package into <paramref name="dir"/> (created); returns the file written.</summary>
    private static string WriteSdkPackage(string dir)
    {
        var package = SdkPackagePath;
        if (!File.Exists(package))
            throw new FileNotFoundException($"the SDK package is not beside this shell ({package} missing); a build of the repository " +
                "makes it (./virtlab builds when stale; or dotnet build src/Shell)");
        Directory.CreateDirectory(dir);
        var target = Path.Combine(Path.GetFullPath(dir), Path.GetFileName(package));
        File.Copy(package, target, overwrite: true);
        return target;
    }

    // ---- new plugin ----

    public static int NewPlugin(string name, string? output, string? packages)
    {
        var err = Console.Error;
        if (!IsPluginName(name))
        {
            err.WriteLine($"virtlab new plugin: '{name}' is not a plugin name: use letters and digits, starting with an upper-case letter " +
                "(it names the project, its namespace and the script global), e.g. Heatmap");
            return ExitCodes.Usage;
        }
        var root = Path.GetFullPath(output ?? name);
        if (Directory.Exists(root) && Directory.EnumerateFileSystemEntries(root).Any())
        {
            err.WriteLine($"virtlab new plugin: {root} exists and is not empty; choose another --output");
            return ExitCodes.Usage;
        }
        var packageDir = Path.GetFullPath(packages ?? Path.Combine(root, "packages"));
        try
        {
            Directory.CreateDirectory(root);
            WriteSdkPackage(packageDir);
            foreach (var (path, text) in PluginScaffold.Files(name, Path.GetRelativePath(root, packageDir), SdkPackageVersion,
                         $"net{Environment.Version.Major}.0"))
            {
                var full = Path.Combine(root, path);
                Directory.CreateDirectory(Path.GetDirectoryName(full)!);
                File.WriteAllText(full, text);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FileNotFoundException)
        {
            err.WriteLine($"virtlab new plugin: {e.Message}");
            return ExitCodes.Failure;
        }
        var o = Console.Out;
        o.WriteLine($"Created plugin {name} in {root} (VirtLab.Sdk {SdkPackageVersion} from {packageDir}).");
        o.WriteLine($"  cd {root}");
        o.WriteLine("  dotnet build -c Release                             # builds the plugin into plugins/" + name + "/");
        o.WriteLine("  dotnet test                                         # its unit tests");
        o.WriteLine($"  virtlab run --plugins plugins recipes/{name}.csx    # the recipe; add --watch to re-run on every change");
        o.WriteLine("  virtlab --plugins plugins                           # the REPL; a rebuild hot-swaps the plugin");
        return ExitCodes.Success;
    }

    /// <summary>Letters and digits, an upper-case letter first: a project, namespace and global name at once.</summary>
    public static bool IsPluginName(string name) =>
        name.Length is > 0 and <= 64 && char.IsAsciiLetterUpper(name[0]) && name.All(char.IsAsciiLetterOrDigit) && Identifiers.IsValid(name);

    // ---- init ----

    /// <summary>The response file <c>virtlab init</c> writes: what the shell gives every recipe, for an editor.</summary>
    public const string ResponseFile = "virtlab.rsp";

    public static int Init(string dir, IReadOnlyList<string> pluginDirs)
    {
        var root = Path.GetFullPath(dir);
        var plugins = PluginSet.Load(new PluginSearchPaths(pluginDirs), ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), TextWriter.Null);
        foreach (var p in plugins.All.Where(p => !p.IsLoaded))
            Console.Error.WriteLine($"virtlab: plugin {p.Name} not loaded ({p.Path}): {p.Error}");
        try
        {
            Directory.CreateDirectory(root);
            File.WriteAllText(Path.Combine(root, ResponseFile), ResponseFileText(plugins));
            File.WriteAllText(Path.Combine(root, "omnisharp.json"), OmniSharpJson());
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"virtlab init: {e.Message}");
            return ExitCodes.Failure;
        }
        Console.Out.WriteLine($"Wrote {Path.Combine(root, "omnisharp.json")} and {Path.Combine(root, ResponseFile)} " +
            $"(VirtLab.Sdk {SdkPackageVersion}, {plugins.Loaded.Count()} plugin{(plugins.Loaded.Count() == 1 ? "" : "s")}: {string.Join(", ", plugins.Loaded.Select(p => p.Name))}).");
        Console.Out.WriteLine("Open the folder in an editor with C# script support (OmniSharp); run virtlab init again after adding a plugin.");
        return ExitCodes.Success;
    }

    /// <summary>
    /// A csi-style response file (what OmniSharp's script support reads through <c>script.rspFilePath</c>): one
    /// <c>/r:</c> per assembly a recipe compiles against (the SDK, the assemblies its public API exposes, each loaded
    /// plugin) and one <c>/u:</c> per namespace the shell imports.
    /// </summary>
    public static string ResponseFileText(PluginSet plugins)
    {
        var sb = new StringBuilder("# Written by `virtlab init`: the references and imports the shell gives every recipe.\n");
        var refs = new List<string> { typeof(SdkVersion).Assembly.Location, typeof(Spectre.Console.AnsiConsole).Assembly.Location, typeof(Iced.Intel.Instruction).Assembly.Location };
        refs.AddRange(plugins.Loaded.Select(p => p.Path));
        foreach (var r in refs.Distinct(StringComparer.Ordinal)) sb.Append("/r:\"").Append(r).Append("\"\n");
        foreach (var u in ScriptPreamble.Imports(plugins)) sb.Append("/u:").Append(u).Append('\n');
        return sb.ToString();
    }

    private static string OmniSharpJson() => JsonSerializer.Serialize(new
    {
        script = new
        {
            enabled = true,
            defaultTargetFramework = $"net{Environment.Version.Major}.0",
            enableScriptNuGetReferences = false,
            rspFilePath = ResponseFile,
        },
    }, new JsonSerializerOptions { WriteIndented = true }) + "\n";

    /// <summary>The <c>/r:</c> paths and <c>/u:</c> namespaces of a response file written by <see cref="ResponseFileText"/>.</summary>
    public static (IReadOnlyList<string> References, IReadOnlyList<string> Imports) ReadResponseFile(string path)
    {
        var refs = new List<string>();
        var usings = new List<string>();
        foreach (var line in File.ReadLines(path).Select(l => l.Trim()))
        {
            if (line.StartsWith("/r:", StringComparison.Ordinal)) refs.Add(line[3..].Trim('"'));
            else if (line.StartsWith("/u:", StringComparison.Ordinal)) usings.Add(line[3..]);
        }
        return (refs, usings);
    }
}
