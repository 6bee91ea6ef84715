using System.Text;
using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Scripting;

/// <summary>
/// Roslyn-free pieces every script compilation and every cached run share: default imports and the
/// generated plugin preamble. (The cached path must not touch a type that mentions Microsoft.CodeAnalysis.)
/// </summary>
public static class ScriptPreamble
{
    public static readonly IReadOnlyList<string> DefaultImports =
    [
        "System", "System.IO", "System.Linq", "System.Collections.Generic", "System.Threading", "System.Threading.Tasks",
        "VirtLab.Sdk", "VirtLab.Sdk.Measure", "VirtLab.Sdk.Machine", "VirtLab.Sdk.Machine.Kvm", "VirtLab.Sdk.Rendering", "VirtLab.Sdk.Virtio",
    ];

    public static IEnumerable<string> Imports(PluginSet plugins) =>
        DefaultImports.Concat(plugins.Loaded.Select(p => p.GlobalType!.Namespace).OfType<string>()).Distinct(StringComparer.Ordinal);

    /// <summary>A submission declaring one strongly typed variable per loaded plugin, or null with no plugins.</summary>
    public static string? Source(PluginSet plugins)
    {
        var loaded = plugins.Loaded.ToList();
        if (loaded.Count == 0) return null;
        var sb = new StringBuilder();
        foreach (var p in loaded)
            sb.Append("var ").Append(p.GlobalName).Append(" = (").Append(CSharpName(p.GlobalType!))
              .Append(")__Plugins[\"").Append(p.GlobalName).Append("\"];\n");
        return sb.ToString();
    }

    /// <summary>The plugin globals by name, for <c>RecipeGlobals.__Plugins</c> (what the preamble reads).</summary>
    public static IReadOnlyDictionary<string, object> PluginGlobals(PluginSet plugins) =>
        plugins.Loaded.ToDictionary(p => p.GlobalName!, p => p.Global!, StringComparer.Ordinal);

    /// <summary>Names a plugin global may not take: the public members of the script globals type. Deferred: the
    /// reflection runs when a plugin is loaded, not on a cached run that loads none (~4 ms).</summary>
    public static IEnumerable<string> ReservedNames(Type globalsType)
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (var m in globalsType.GetMembers(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.Static))
            if (m is not System.Reflection.ConstructorInfo && seen.Add(m.Name)) yield return m.Name;
    }

    /// <summary>C# spelling of a type: global::Ns.Outer.Inner&lt;global::System.Int32&gt;.</summary>
    public static string CSharpName(Type t)
    {
        if (t.IsArray) return CSharpName(t.GetElementType()!) + "[" + new string(',', t.GetArrayRank() - 1) + "]";
        if (t.IsGenericParameter) return t.Name;
        return Build(t, t.IsGenericType ? t.GetGenericArguments() : []);

        // The arguments of a nested generic type include its declaring types' arguments first.
        static string Build(Type t, Type[] all)
        {
            int ownTotal = t.IsGenericType ? t.GetGenericArguments().Length : 0;
            int parentTotal = t.IsNested && t.DeclaringType!.IsGenericType ? t.DeclaringType.GetGenericArguments().Length : 0;
            var prefix = t.IsNested
                ? Build(t.DeclaringType!, all[..parentTotal]) + "."
                : "global::" + (string.IsNullOrEmpty(t.Namespace) ? "" : t.Namespace + ".");
            var name = t.Name;
            var tick = name.IndexOf('`');
            if (tick >= 0) name = name[..tick];
            var mine = all[parentTotal..Math.Max(parentTotal, ownTotal)];
            return prefix + name + (mine.Length > 0 ? "<" + string.Join(", ", mine.Select(CSharpName)) + ">" : "");
        }
    }
}

/// <summary>What compiling a script needs from the loaded plugins, as plain data: their assembly paths (references),
/// the imports (defaults + each global's namespace) and the preamble source. Roslyn-free, so a client can send it to
/// the compile server.</summary>
public sealed record CompileInputs(IReadOnlyList<string> PluginPaths, IReadOnlyList<string> Imports, string? Preamble)
{
    public static CompileInputs From(PluginSet plugins) =>
        new([.. plugins.Loaded.Select(p => p.Path)], [.. ScriptPreamble.Imports(plugins)], ScriptPreamble.Source(plugins));
}
