using System.Globalization;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.Runtime.Loader;
using System.Text.Json;
using McMaster.NETCore.Plugins.Loader;
using VirtLab.Sdk;
using VirtLab.Sdk.Plugins;

namespace VirtLab.Shell.PluginHost;

/// <summary>Unused: found but left unloaded because the cached recipe being run does not reference it.</summary>
public enum PluginStatus { Loaded, Error, Unused }

/// <summary>One plugin folder found by discovery, loaded or not (then <see cref="Error"/> says why).</summary>
public sealed class PluginInfo
{
    /// <summary>The plugin's name: its project's Product (AssemblyProduct) when it names one other than the assembly, else
    /// the assembly (folder) name. The SDK package's build targets make a project's Product its name without "Plugins.".</summary>
    public required string Name { get; set; }
    /// <summary>The plugin folder's name = the assembly name (what discovery and duplicates go by).</summary>
    public string AssemblyName => System.IO.Path.GetFileNameWithoutExtension(Path);
    public required string Path { get; init; }
    public PluginStatus Status { get; internal set; } = PluginStatus.Error;
    public string? Error { get; internal set; }
    /// <summary>The plugin's own version: its informational version without the "+commit" a git build appends.</summary>
    public string? Version { get; internal set; }
    /// <summary>This build of the plugin (the first 8 hex digits of its module version id): tells two builds of one version apart.</summary>
    public string Build => Mvid == Guid.Empty ? "" : Mvid.ToString("N")[..8];
    /// <summary>Version of the VirtLab.Sdk the plugin was compiled against.</summary>
    public Version? SdkVersion { get; internal set; }
    public string? GlobalName { get; internal set; }
    public Type? GlobalType { get; internal set; }
    public object? Global { get; internal set; }
    /// <summary>The plugin's entry object (its <c>WarmUp()</c> is run before a recipe).</summary>
    public VirtLabPlugin? Plugin { get; internal set; }
    public string? Description { get; internal set; }
    public Assembly? Assembly { get; internal set; }
    /// <summary>The plugin's load context (McMaster.NETCore.Plugins' ManagedLoadContext).</summary>
    public AssemblyLoadContext? LoadContext { get; internal set; }
    /// <summary>Module version id of the plugin assembly: part of the compiled-recipe cache key.</summary>
    public Guid Mvid { get; internal set; }
    public bool IsLoaded => Status == PluginStatus.Loaded;

    /// <summary>The plugin's private copy of <paramref name="name"/> (from its folder or deps.json), or null when the
    /// default context provides it (framework, shared assemblies) or nobody has it.</summary>
    public Assembly? ResolvePrivate(AssemblyName name)
    {
        if (LoadContext is null || name.Name is null || PluginSet.SharedAssemblies.Contains(name.Name)) return null;
        try
        {
            var a = LoadContext.LoadFromAssemblyName(name);
            return AssemblyLoadContext.GetLoadContext(a) == LoadContext ? a : null;
        }
        catch (Exception e) when (e is FileNotFoundException or FileLoadException or BadImageFormatException) { return null; }
    }
}

/// <summary>Where to look for plugins. Each entry is either a plugin folder (holding &lt;Name&gt;.dll where
/// Name is the folder's name) or a folder of such plugin folders.</summary>
public sealed record PluginSearchPaths(IReadOnlyList<string> Explicit, bool IncludeEnvironment = true, bool IncludeBuiltIn = true)
{
    /// <summary>The shell's folder whose plugins/ (and its sibling configurations') are the built-in roots; the running shell's by default.</summary>
    public string ShellDirectory { get; init; } = BuildOutput;

    /// <summary>The shell's build output: AppContext.BaseDirectory, except in the prepared launch layout (artifacts/launch/,
    /// src/ReadyToRunComposite.targets), whose runtimeconfig names the build output it was made from
    /// (<c>VirtLab.BuildOutput</c>, relative to it): plugins are built into that output's plugins/ folders.</summary>
    public static string BuildOutput { get; } =
        AppContext.GetData("VirtLab.BuildOutput") is string rel
            ? System.IO.Path.GetFullPath(System.IO.Path.Combine(AppContext.BaseDirectory, rel)) + System.IO.Path.DirectorySeparatorChar
            : AppContext.BaseDirectory;

    public const string EnvironmentVariable = "VIRTLAB_PLUGINS";
    public static PluginSearchPaths None { get; } = new([], false, false);

    public IEnumerable<string> Roots() => RootsWithOrigin().Select(r => r.Path);

    /// <summary>Each root and whether the user named it (then a missing folder is worth an error line).</summary>
    public IEnumerable<(string Path, bool Named)> RootsWithOrigin()
    {
        foreach (var p in NamedRoots()) yield return (p, true);
        if (IncludeBuiltIn)
            foreach (var p in BuiltInRoots(ShellDirectory)) yield return (p, false);
    }

    /// <summary>The roots the user named: --plugins, then VIRTLAB_PLUGINS.</summary>
    public IEnumerable<string> NamedRoots()
    {
        foreach (var p in Explicit) yield return p;
        if (IncludeEnvironment && Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } env)
            foreach (var p in env.Split(System.IO.Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
                yield return p;
    }

    /// <summary>
    /// The shell's own plugins/ folder, then, when the shell runs from the build's artifacts layout
    /// (bin/VirtLab.Shell/&lt;configuration&gt;/), the plugins/ folders of its other configurations: a plugin built with a
    /// plain <c>dotnet build</c> (Debug) lands in debug/plugins/ and is found by the Release shell too.
    /// </summary>
    public static IEnumerable<string> BuiltInRoots(string? shellDirectory = null)
    {
        var own = System.IO.Path.TrimEndingDirectorySeparator(System.IO.Path.GetFullPath(shellDirectory ?? PluginSearchPaths.BuildOutput));
        yield return System.IO.Path.Combine(own, "plugins");
        var parent = System.IO.Path.GetDirectoryName(own);
        if (parent is null || !string.Equals(System.IO.Path.GetFileName(parent), "VirtLab.Shell", StringComparison.Ordinal)) yield break;
        foreach (var config in SortedDirectories(parent))
            if (!string.Equals(config, own, StringComparison.Ordinal)) yield return System.IO.Path.Combine(config, "plugins");
    }

    /// <summary>Subfolders in ordinal order; Array.Sort, not LINQ's Order, whose sort map is JIT-compiled on every run.</summary>
    internal static string[] SortedDirectories(string path)
    {
        var dirs = Directory.GetDirectories(path);
        Array.Sort(dirs, StringComparer.Ordinal);
        return dirs;
    }

    /// <summary>Whether <paramref name="root"/> is one of the shell's own (built-in) plugin roots.</summary>
    public static bool IsBuiltIn(string root) => BuiltInRoots().Any(r => string.Equals(System.IO.Path.GetFullPath(r), System.IO.Path.GetFullPath(root), StringComparison.Ordinal));
}

/// <summary>
/// The plugins of one process: discovered, checked, loaded each into its own context and initialised.
/// A broken plugin becomes an entry with an error; it never stops the shell.
/// </summary>
public sealed class PluginSet
{
    /// <summary>Assemblies that must have exactly one copy in the process (the shell's): their types are the contract.</summary>
    public static readonly IReadOnlySet<string> SharedAssemblies =
        new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "VirtLab.Sdk", "Spectre.Console", "Iced" };
    private static readonly Type[] SharedTypes = [typeof(VirtLabPlugin), typeof(Spectre.Console.AnsiConsole), typeof(Iced.Intel.Instruction)];

    public IReadOnlyList<PluginInfo> All { get; }
    public IEnumerable<PluginInfo> Loaded => All.Where(p => p.IsLoaded);
    public static PluginSet Empty { get; } = new([]);

    private Lazy<HashSet<string>> _reserved = new(() => []);
    private readonly Dictionary<string, PluginInfo> _byGlobal = new(StringComparer.Ordinal);
    private TextWriter? _log;

    private PluginSet(IReadOnlyList<PluginInfo> all) => All = all;

    /// <summary>Whether some plugins were found but left unloaded (<see cref="PluginStatus.Unused"/>).</summary>
    public bool HasUnused => All.Any(p => p.Status == PluginStatus.Unused);

    /// <summary>Loads the plugins <see cref="Load"/> left <see cref="PluginStatus.Unused"/> (a cached recipe turned
    /// out stale and must be compiled against every plugin).</summary>
    public void LoadRest()
    {
        foreach (var info in All.Where(p => p.Status == PluginStatus.Unused))
        {
            info.Status = PluginStatus.Error;
            LoadOne(info, _reserved.Value, _log ?? Console.Error);
            CheckGlobal(info, _byGlobal);
        }
    }

    private static void CheckGlobal(PluginInfo info, Dictionary<string, PluginInfo> byGlobal)
    {
        if (!info.IsLoaded) return;
        if (byGlobal.TryGetValue(info.GlobalName!, out var owner))
        {
            Fail(info, $"global '{info.GlobalName}' is already provided by plugin '{owner.Name}' ({owner.Path}); each global name must be unique");
            return;
        }
        byGlobal[info.GlobalName!] = info;
    }

    /// <summary>Discovers and loads plugins. <paramref name="reservedNames"/> are names a global may not take
    /// (the members of the script globals type).</summary>
    /// <param name="only">When given, only the plugins whose assembly (folder) name it accepts are loaded and
    /// initialised; the others are <see cref="PluginStatus.Unused"/> (no error, nothing of them loaded or run).</param>
    public static PluginSet Load(PluginSearchPaths paths, IEnumerable<string>? reservedNames = null, TextWriter? log = null, Func<string, bool>? only = null)
    {
        // Made when the first plugin loads (the names come from reflection a run that loads none does without).
        var reserved = new Lazy<HashSet<string>>(() => new HashSet<string>(reservedNames ?? [], StringComparer.Ordinal));
        var list = new List<PluginInfo>();
        var byName = new Dictionary<string, PluginInfo>(StringComparer.OrdinalIgnoreCase);
        var byGlobal = new Dictionary<string, PluginInfo>(StringComparer.Ordinal);
        foreach (var (root, named) in paths.RootsWithOrigin())
            if (named && !Directory.Exists(root))
                list.Add(new PluginInfo { Name = System.IO.Path.GetFileName(System.IO.Path.TrimEndingDirectorySeparator(root)), Path = System.IO.Path.GetFullPath(root),
                    Error = "plugin folder not found (from --plugins or VIRTLAB_PLUGINS)" });
        var builtIn = new HashSet<string>(StringComparer.Ordinal);
        foreach (var dir in Discover(paths, builtIn))
        {
            var name = System.IO.Path.GetFileName(dir.TrimEnd(System.IO.Path.DirectorySeparatorChar));
            var info = new PluginInfo { Name = name, Path = System.IO.Path.Combine(dir, name + ".dll") };
            list.Add(info);
            if (byName.TryGetValue(name, out var first))
            {
                info.Error = builtIn.Contains(dir) && builtIn.Contains(System.IO.Path.GetDirectoryName(first.Path)!)
                    ? $"an older build of '{name}' (built {File.GetLastWriteTime(info.Path):yyyy-MM-dd HH:mm:ss}); the newest one is loaded, from {first.Path}"
                    : $"duplicate plugin '{name}': already loaded from {first.Path}";
                continue;
            }
            byName[name] = info;
            if (only is not null && !only(name)) { info.Status = PluginStatus.Unused; continue; }
            LoadOne(info, reserved.Value, log ?? Console.Error);
            CheckGlobal(info, byGlobal);
        }
        var set = new PluginSet(list) { _log = log };
        set._reserved = reserved;
        foreach (var (g, p) in byGlobal) set._byGlobal[g] = p;
        return set;
    }

    /// <summary>Plugin folders under the search roots, in priority order (explicit, environment, built-in).</summary>
    /// <remarks>Among the built-in roots (the shell's configurations) one plugin's newest build comes first, so a
    /// fresh Debug build wins over an older Release one and the other way round.</remarks>
    public static IEnumerable<string> Discover(PluginSearchPaths paths) => Discover(paths, null);

    private static IEnumerable<string> Discover(PluginSearchPaths paths, HashSet<string>? builtInDirs)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var builtIn = new List<string>();
        foreach (var (root0, named) in paths.RootsWithOrigin())
        {
            var root = System.IO.Path.GetFullPath(root0);
            if (!Directory.Exists(root)) continue;
            IEnumerable<string> dirs = File.Exists(System.IO.Path.Combine(root, System.IO.Path.GetFileName(root) + ".dll"))
                ? [root]
                : PluginSearchPaths.SortedDirectories(root);
            foreach (var d in dirs)
                if (seen.Add(d))
                {
                    if (named) yield return d;
                    else builtIn.Add(d);
                }
        }
        DateTime Built(string d) => File.GetLastWriteTimeUtc(System.IO.Path.Combine(d, System.IO.Path.GetFileName(d) + ".dll"));
        // By name, then newest first, then root order (a stable sort). Not OrderBy/ThenByDescending: their generic
        // instantiations over DateTime are in no ReadyToRun image (13 methods JIT-compiled on every run).
        var sorted = builtIn.ToArray();
        Array.Sort(sorted, (a, b) =>
        {
            var c = string.CompareOrdinal(System.IO.Path.GetFileName(a), System.IO.Path.GetFileName(b));
            if (c == 0) c = Built(b).CompareTo(Built(a));
            return c != 0 ? c : builtIn.IndexOf(a).CompareTo(builtIn.IndexOf(b));
        });
        foreach (var d in sorted)
        {
            builtInDirs?.Add(d);
            yield return d;
        }
    }

    private static void Fail(PluginInfo info, string error)
    {
        info.Status = PluginStatus.Error;
        info.Error = error;
        info.Global = null;
    }

    private static void LoadOne(PluginInfo info, HashSet<string> reserved, TextWriter log)
    {
        if (!File.Exists(info.Path)) { Fail(info, $"no {System.IO.Path.GetFileName(info.Path)} in the plugin folder (a plugin folder holds <Name>.dll named like the folder)"); return; }

        // Inspect metadata before loading anything: a wrong file or SDK major is reported without side effects.
        try
        {
            using var pe = new PEReader(File.OpenRead(info.Path));
            if (!pe.HasMetadata) { Fail(info, "not a .NET assembly (no CLI metadata)"); return; }
            var md = pe.GetMetadataReader();
            if (!md.IsAssembly) { Fail(info, "not a .NET assembly (a module without an assembly manifest)"); return; }
            info.Mvid = md.GetGuid(md.GetModuleDefinition().Mvid);
            foreach (var h in md.AssemblyReferences)
            {
                var r = md.GetAssemblyReference(h);
                if (md.GetString(r.Name) == "VirtLab.Sdk") info.SdkVersion = r.Version;
            }
        }
        catch (BadImageFormatException) { Fail(info, "not a .NET assembly (not a valid PE file)"); return; }
        catch (IOException e) { Fail(info, $"cannot read: {e.Message}"); return; }

        if (info.SdkVersion is null) { Fail(info, "no plugin: the assembly does not reference VirtLab.Sdk"); return; }
        if (info.SdkVersion.Major != SdkVersion.Major)
        {
            Fail(info, $"SDK major mismatch: built against VirtLab.Sdk {info.SdkVersion.Major}.x ({SdkVersion.Format(info.SdkVersion)}), this shell provides {SdkVersion.Major}.x ({SdkVersion.Text}); rebuild the plugin against SDK {SdkVersion.Major}");
            return;
        }
        // Minor versions only add to the contract: a plugin may use what its SDK minor added, which an older shell lacks.
        if (info.SdkVersion.Minor > SdkVersion.Current.Minor)
        {
            Fail(info, $"built against a newer VirtLab.Sdk ({SdkVersion.Format(info.SdkVersion)}) than this shell provides ({SdkVersion.Text}); update the shell or build the plugin against SDK {SdkVersion.Text}");
            return;
        }

        try
        {
            // McMaster.NETCore.Plugins' ManagedLoadContext, built as its PluginLoader would build it: the plugin's own context
            // resolving its private dependencies and native libraries from its deps.json and folder, the shared types'
            // assemblies (and what they reference) from the shell's default context. Not unloadable: hot swap restarts
            // the evaluation process instead.
            var context = CreateLoadContext(info.Path);
            var asm = context.LoadFromAssemblyPath(info.Path);
            info.LoadContext = context;
            info.Assembly = asm;
            var informational = asm.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
            info.Version = informational is { Length: > 0 } ? informational.Split('+')[0] : asm.GetName().Version?.ToString();
            if (asm.GetCustomAttribute<AssemblyProductAttribute>()?.Product is { Length: > 0 } product && product != info.AssemblyName) info.Name = product;

            Type[] types;
            try { types = asm.GetExportedTypes(); }
            catch (ReflectionTypeLoadException e) { Fail(info, $"cannot load its types: {e.LoaderExceptions.FirstOrDefault()?.Message ?? e.Message}"); return; }
            var candidates = types.Where(t => typeof(VirtLabPlugin).IsAssignableFrom(t) && !t.IsAbstract && t.IsClass).ToList();
            if (candidates.Count == 0) { Fail(info, "no plugin type: expected one public non-abstract subclass of VirtLab.Sdk.Plugins.VirtLabPlugin"); return; }
            if (candidates.Count > 1) { Fail(info, $"several plugin types ({string.Join(", ", candidates.Select(t => t.FullName))}); expected exactly one"); return; }
            var type = candidates[0];
            if (type.GetConstructor(Type.EmptyTypes) is null) { Fail(info, $"{type.FullName} has no public parameterless constructor"); return; }

            VirtLabPlugin plugin;
            string globalName; Type globalType;
            try
            {
                plugin = (VirtLabPlugin)Activator.CreateInstance(type)!;
                globalName = plugin.GlobalName;
                globalType = plugin.GlobalType;
                info.Description = plugin.Description;
            }
            catch (Exception e) { Fail(info, $"initialisation threw {Unwrap(e)}"); return; }
            info.GlobalName = globalName;
            info.GlobalType = globalType;

            if (!Identifiers.IsValid(globalName)) { Fail(info, $"invalid global name '{globalName}': must be a C# identifier (letter or _ then letters, digits, _) and not a keyword"); return; }
            if (reserved.Contains(globalName)) { Fail(info, $"global name '{globalName}' is taken by the script globals (reserved: {string.Join(", ", reserved.Order())})"); return; }
            if (globalType is null || !globalType.IsVisible) { Fail(info, $"global type {globalType?.FullName ?? "null"} is not public; scripts must be able to name it"); return; }

            object global;
            try { global = plugin.CreateGlobal(new PluginContext(System.IO.Path.GetDirectoryName(info.Path)!, log)); }
            catch (Exception e) { Fail(info, $"initialisation threw {Unwrap(e)}"); return; }
            if (global is null || !globalType.IsInstanceOfType(global))
            {
                Fail(info, $"CreateGlobal returned {(global is null ? "null" : global.GetType().FullName)}, not an instance of {globalType.FullName}");
                return;
            }
            info.Global = global;
            info.Plugin = plugin;
            info.Status = PluginStatus.Loaded;
            info.Error = null;
        }
        catch (Exception e) when (e is FileLoadException or BadImageFormatException or FileNotFoundException or TypeLoadException)
        {
            Fail(info, $"cannot load: {e.Message}");
        }
        catch (Exception e) // whatever else loading or inspecting it throws: an error entry, never the end of the shell
        {
            Fail(info, $"cannot load: {Unwrap(e)}");
        }
    }

    /// <summary>
    /// The plugin's context through McMaster's public <see cref="AssemblyLoadContextBuilder"/>, with what
    /// <c>PluginLoader.CreateFromAssemblyFile</c> sets up, minus two costs on every run's start (~0.1 s of a cached run):
    /// shared assemblies are lazy (a shared assembly's references become shared when the plugin first resolves it, instead
    /// of loading the whole reference closure of Spectre.Console and Iced, ~100 framework facades, up front), and the
    /// runtimeconfig files' additionalProbingPaths are read with <see cref="JsonDocument"/> (the library deserializes them
    /// with reflection-based System.Text.Json: ~160 methods JIT-compiled).
    /// </summary>
    private static AssemblyLoadContext CreateLoadContext(string path)
    {
        var builder = new AssemblyLoadContextBuilder();
        builder.SetMainAssemblyPath(path);
        builder.SetDefaultContext(AssemblyLoadContext.Default);
        builder.IsLazyLoaded(true);
        foreach (var t in SharedTypes)
        {
            builder.PreferDefaultLoadContextAssembly(t.Assembly.GetName());
            // Their direct references by name (metadata only, nothing loaded): shared from the start, as the library's
            // eager walk would make them; what those reference in turn follows as they resolve.
            foreach (var r in t.Assembly.GetReferencedAssemblies()) builder.PreferDefaultLoadContextAssembly(r);
        }
        // A System.*.dll copied next to a plugin must not shadow the runtime's own.
        var dir = System.IO.Path.GetDirectoryName(path)!;
        foreach (var f in Directory.EnumerateFiles(dir, "*.dll"))
            if (IsFrameworkAssembly(System.IO.Path.GetFileNameWithoutExtension(f)))
                builder.PreferDefaultLoadContextAssembly(new AssemblyName(System.IO.Path.GetFileNameWithoutExtension(f)));
        AddProbingPaths(builder, System.IO.Path.Combine(dir, System.IO.Path.GetFileNameWithoutExtension(path) + ".runtimeconfig.json"));
        foreach (var hostConfig in Directory.GetFiles(AppContext.BaseDirectory, "*.runtimeconfig.json"))
            AddProbingPaths(builder, hostConfig);
        return builder.Build();
    }

    /// <summary>runtimeOptions.additionalProbingPaths of a runtimeconfig.json and its .dev.json, with |arch| and |tfm|
    /// expanded, as the library's <c>TryAddAdditionalProbingPathFromRuntimeConfig</c> adds them; a missing or unreadable
    /// file adds nothing (as there).</summary>
    private static void AddProbingPaths(AssemblyLoadContextBuilder builder, string runtimeConfig)
    {
        foreach (var file in new[] { runtimeConfig, runtimeConfig[..^".json".Length] + ".dev.json" })
        {
            if (!File.Exists(file)) continue;
            try
            {
                using var doc = JsonDocument.Parse(File.ReadAllBytes(file), new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
                if (!doc.RootElement.TryGetProperty("runtimeOptions", out var options) || options.ValueKind != JsonValueKind.Object) continue;
                var tfm = options.TryGetProperty("tfm", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
                if (!options.TryGetProperty("additionalProbingPaths", out var paths) || paths.ValueKind != JsonValueKind.Array) continue;
                foreach (var p in paths.EnumerateArray())
                {
                    if (p.GetString() is not { Length: > 0 } probe) continue;
                    probe = probe.Replace("|arch|", System.Runtime.InteropServices.RuntimeInformation.OSArchitecture.ToString().ToLowerInvariant());
                    if (tfm is not null) probe = probe.Replace("|tfm|", tfm);
                    if (Directory.Exists(probe)) builder.AddProbingPath(probe);
                }
            }
            catch (Exception e) when (e is JsonException or IOException or UnauthorizedAccessException or InvalidOperationException) { }
        }
    }

    // A copied System.*.dll next to a plugin must not shadow the runtime's own.
    private static bool IsFrameworkAssembly(string name) =>
        name.StartsWith("System.", StringComparison.OrdinalIgnoreCase) || name is "System" or "netstandard" or "mscorlib";

    private static string Unwrap(Exception e)
    {
        e = VirtLab.Sdk.Measure.RecipeContext.Unwrap(e)!;
        return $"{e.GetType().Name}: {e.Message}";
    }
}

/// <summary>C# identifier rules without Roslyn (the plugin host runs on the cached path, which must not load it).</summary>
public static class Identifiers
{
    public static readonly IReadOnlySet<string> Keywords = new HashSet<string>(StringComparer.Ordinal)
    {
        "abstract","as","base","bool","break","byte","case","catch","char","checked","class","const","continue","decimal",
        "default","delegate","do","double","else","enum","event","explicit","extern","false","finally","fixed","float","for",
        "foreach","goto","if","implicit","in","int","interface","internal","is","lock","long","namespace","new","null","object",
        "operator","out","override","params","private","protected","public","readonly","ref","return","sbyte","sealed","short",
        "sizeof","stackalloc","static","string","struct","switch","this","throw","true","try","typeof","uint","ulong","unchecked",
        "unsafe","ushort","using","virtual","void","volatile","while",
    };

    public static bool IsValid(string? name)
    {
        if (string.IsNullOrEmpty(name) || Keywords.Contains(name)) return false;
        if (!(char.IsLetter(name[0]) || name[0] == '_')) return false;
        foreach (var c in name.AsSpan(1))
        {
            var cat = char.GetUnicodeCategory(c);
            if (!(char.IsLetterOrDigit(c) || c == '_' || cat is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.NonSpacingMark
                  or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.Format)) return false;
        }
        return true;
    }
}
