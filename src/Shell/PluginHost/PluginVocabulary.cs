using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace VirtLab.Shell.PluginHost;

/// <summary>
/// The names a script would write to use a plugin, read from the plugin's metadata without loading it: its global
/// (the constant its <c>GlobalName</c> getter returns), its public types, the methods of its public static classes
/// (extension methods), an attribute's short name. A source that names none of them reaches the plugin only through a
/// call the compiler makes by pattern (an extension <c>GetAwaiter</c>, <c>Deconstruct</c>, <c>Add</c>…): a recipe compiles
/// without the plugins (RunCommand), and again with them when that fails.
/// </summary>
public static class PluginVocabulary
{
    /// <summary>The plugin's names, or null when they cannot all be known without loading it (its global name is not
    /// a constant, the file is no readable assembly): then the plugin counts as named.</summary>
    public static HashSet<string>? Read(string assemblyPath)
    {
        try
        {
            using var pe = new PEReader(File.OpenRead(assemblyPath));
            if (!pe.HasMetadata) return null;
            var md = pe.GetMetadataReader();
            var names = new HashSet<string>(StringComparer.Ordinal);
            string? global = null;
            foreach (var h in md.TypeDefinitions)
            {
                var t = md.GetTypeDefinition(h);
                var visibility = t.Attributes & TypeAttributes.VisibilityMask;
                var isPublic = visibility == TypeAttributes.Public
                    || visibility == TypeAttributes.NestedPublic && IsPublic(md, t.GetDeclaringType());
                foreach (var mh in t.GetMethods())
                {
                    var m = md.GetMethodDefinition(mh);
                    if (md.StringComparer.Equals(m.Name, "get_GlobalName"))
                    {
                        if (ConstantString(pe, md, m) is not { } constant || global is not null && global != constant) return null;
                        global = constant;
                    }
                    else if (isPublic && IsStaticClass(t.Attributes) && (m.Attributes & MethodAttributes.MemberAccessMask) == MethodAttributes.Public)
                        names.Add(md.GetString(m.Name));
                }
                if (!isPublic) continue;
                var name = md.GetString(t.Name);
                var tick = name.IndexOf('`');
                names.Add(tick < 0 ? name : name[..tick]);
                if (name.EndsWith("Attribute", StringComparison.Ordinal) && name.Length > 9) names.Add(name[..^9]); // [Probe]
            }
            if (global is null) return null;
            names.Add(global);
            return names;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or BadImageFormatException or InvalidOperationException) { return null; }
    }

    /// <summary>Whether <paramref name="source"/> names anything of the discovered plugins (loaded or not), or one of
    /// them has names that cannot be known without loading it, or the source pulls in code this does not read (a
    /// <c>#load</c>ed file, a <c>#r</c> assembly).</summary>
    public static bool Names(string source, PluginSet plugins)
    {
        if (plugins.All.Count == 0) return false;
        if (PullsInCode(source)) return true;
        var vocabulary = new HashSet<string>(StringComparer.Ordinal);
        foreach (var p in plugins.All)
        {
            if (!File.Exists(p.Path)) continue; // a named plugin folder that is not there
            if (Read(p.Path) is not { } names) return true;
            vocabulary.UnionWith(names);
        }
        return vocabulary.Count > 0 && Identifiers(source).Any(vocabulary.Contains);
    }

    /// <summary>Whether the source has a <c>#load</c> or <c>#r</c> directive (what those bring is not in its text).</summary>
    public static bool PullsInCode(string source) =>
        source.Contains("#load", StringComparison.Ordinal) || source.Contains("#r", StringComparison.Ordinal);

    /// <summary>The identifiers of a source, roughly: runs of letters, digits and _ starting with a letter or _
    /// (strings and comments included, which can only make a name count as used).</summary>
    public static IEnumerable<string> Identifiers(string source)
    {
        for (int i = 0; i < source.Length;)
        {
            if (!(char.IsLetter(source[i]) || source[i] == '_')) { i++; continue; }
            int start = i;
            while (i < source.Length && (char.IsLetterOrDigit(source[i]) || source[i] == '_')) i++;
            yield return source[start..i];
        }
    }

    private static bool IsStaticClass(TypeAttributes a) => (a & (TypeAttributes.Abstract | TypeAttributes.Sealed)) == (TypeAttributes.Abstract | TypeAttributes.Sealed);

    private static bool IsPublic(MetadataReader md, TypeDefinitionHandle h)
    {
        while (!h.IsNil)
        {
            var t = md.GetTypeDefinition(h);
            var v = t.Attributes & TypeAttributes.VisibilityMask;
            if (v == TypeAttributes.Public) return true;
            if (v != TypeAttributes.NestedPublic) return false;
            h = t.GetDeclaringType();
        }
        return false;
    }

    /// <summary>The string a method returns when its body only returns a literal — <c>ldstr "…"; ret</c> as Release
    /// builds emit it, or a Debug build's <c>nop; ldstr; stloc.0; br.s +0; ldloc.0; ret</c> — else null.</summary>
    private static string? ConstantString(PEReader pe, MetadataReader md, MethodDefinition m)
    {
        if (m.RelativeVirtualAddress == 0) return null;
        var il = pe.GetMethodBody(m.RelativeVirtualAddress).GetILBytes();
        if (il is null) return null;
        int i = 0;
        while (i < il.Length && il[i] == 0x00) i++; // nop
        if (i + 5 >= il.Length || il[i] != 0x72) return null; // ldstr <token>
        var token = BitConverter.ToInt32(il, i + 1);
        var rest = il.AsSpan(i + 5);
        if (!(rest.SequenceEqual((ReadOnlySpan<byte>)[0x2A]) // ret
              || rest.SequenceEqual((ReadOnlySpan<byte>)[0x0A, 0x2B, 0x00, 0x06, 0x2A]))) // stloc.0; br.s +0; ldloc.0; ret
            return null;
        if ((token >>> 24) != 0x70) return null; // a user-string token
        return md.GetUserString(MetadataTokens.UserStringHandle(token & 0xFFFFFF));
    }
}
