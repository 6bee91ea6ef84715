using System.Reflection;
using System.Runtime.Loader;

namespace VirtLab.Shell.PluginHost;

/// <summary>
/// One per plugin: resolves the plugin's private dependencies from its folder (via its .deps.json when
/// present) and defers the shared contract assemblies to the default context so that VirtLab.Sdk types
/// are identical for the shell, every plugin and every script.
/// </summary>
public sealed class PluginLoadContext : AssemblyLoadContext
{
    /// <summary>Assemblies that must have exactly one copy in the process.</summary>
    public static readonly IReadOnlySet<string> SharedAssemblies =
        new HashSet<string>(StringComparer.OrdinalIgnoreCase) { "VirtLab.Sdk", "Spectre.Console", "Iced" };

    private readonly AssemblyDependencyResolver? _resolver;
    private readonly string _directory;

    public PluginLoadContext(string mainAssemblyPath) : base(Path.GetFileNameWithoutExtension(mainAssemblyPath), isCollectible: false)
    {
        _directory = Path.GetDirectoryName(mainAssemblyPath)!;
        try { _resolver = new AssemblyDependencyResolver(mainAssemblyPath); }
        catch (InvalidOperationException) { _resolver = null; } // no usable deps.json: probe the folder by name
    }

    /// <summary>Path of a plugin-private assembly, or null when the default context provides it.</summary>
    public string? ResolvePrivate(AssemblyName name)
    {
        if (name.Name is null || SharedAssemblies.Contains(name.Name)) return null;
        var path = _resolver?.ResolveAssemblyToPath(name);
        if (path is null)
        {
            var candidate = Path.Combine(_directory, name.Name + ".dll");
            if (File.Exists(candidate) && !IsFrameworkAssembly(name.Name)) path = candidate;
        }
        return path;
    }

    protected override Assembly? Load(AssemblyName name)
    {
        var path = ResolvePrivate(name);
        return path is null ? null : LoadFromAssemblyPath(path);
    }

    protected override IntPtr LoadUnmanagedDll(string unmanagedDllName)
    {
        var path = _resolver?.ResolveUnmanagedDllToPath(unmanagedDllName);
        return path is null ? IntPtr.Zero : LoadUnmanagedDllFromPath(path);
    }

    // A copied System.*.dll next to a plugin must not shadow the runtime's own.
    private static bool IsFrameworkAssembly(string name) =>
        name.StartsWith("System.", StringComparison.OrdinalIgnoreCase) || name is "System" or "netstandard" or "mscorlib";
}
