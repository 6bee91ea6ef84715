using System.Reflection.Metadata;
using System.Reflection.PortableExecutable;
using System.IO.Hashing;
using System.Text;
using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Scripting;

/// <summary>A compiled recipe ready to run: its submissions in chain order (plugin preamble first), the files it
/// was compiled from, and its compile warnings (formatted, so a cached run shows them without Roslyn).</summary>
public sealed record CompiledRecipe(IReadOnlyList<CompiledRecipe.Submission> Submissions, IReadOnlyList<CompiledRecipe.FileHash> Sources,
    IReadOnlyList<CompiledRecipe.FileHash> References, IReadOnlyList<string> Warnings)
{
    /// <summary>The image of one submission assembly and its script class (null: nothing to run, e.g. only usings).</summary>
    public sealed record Submission(string? TypeName, byte[] Image);
    public sealed record FileHash(string Path, string Hash);

    /// <summary>Whether a run needs the SDK/plugin warm-up: a cached entry's record (one that does not say, written by an
    /// older shell, counts as needing it), else worked out once from the submissions (<see cref="RecipeCache.NeedsWarmUp"/>).</summary>
    public bool NeedsWarmUp { get => _needsWarmUp ??= RecipeCache.NeedsWarmUp(Submissions); init => _needsWarmUp = value; }
    private bool? _needsWarmUp;

    /// <summary>The plugins the recipe's own code uses (a cached entry's record; null on a fresh compile): a cached run
    /// loads and initialises only these.</summary>
    public IReadOnlyList<UsedPlugin>? Plugins { get; init; }

    /// <summary>Index of the plugin preamble among <see cref="Submissions"/>, or -1.</summary>
    public int PreambleIndex { get; init; } = -1;

    /// <summary>A plugin build a cached recipe was compiled against and uses: folder (assembly) name, build, global.</summary>
    public sealed record UsedPlugin(string AssemblyName, Guid Mvid, string GlobalName);

    /// <summary>Whether every plugin this cached recipe uses is loaded in the same build with the same global.</summary>
    public bool PluginsMatch(PluginSet plugins) =>
        Plugins is { } used && used.All(u => plugins.Loaded.Any(p => p.AssemblyName == u.AssemblyName && p.Mvid == u.Mvid && p.GlobalName == u.GlobalName));
}

/// <summary>
/// Compiled recipes on disk ($VIRTLAB_CACHE, else $XDG_CACHE_HOME/virtlab/scripts, else ~/.cache/virtlab/scripts).
/// The entry key covers the recipe's path and bytes and the shell and SDK builds; the entry records the plugin builds
/// its recipe uses (a run loads only those and finds the entry stale when one changed);
/// the entry lists the #load closure and #r files with their hashes, verified on every hit (a changed
/// included file is a miss). Roslyn-free: a hit runs without loading the compiler.
/// Hashes are XxHash128 (System.IO.Hashing): a cache key and a check against torn or mixed entries, not a defence
/// against someone who can write the cache folder; managed, so a cached run never loads OpenSSL.
/// Concurrency: an entry is written beside and renamed into place; a reader reads every submission image into
/// memory and checks it against the hash the manifest records, so an entry another process is replacing or
/// pruning at that moment reads as a miss (the run compiles), never as a mix of two entries.
/// </summary>
public sealed class RecipeCache(string root)
{
    private const string Manifest = "manifest.txt";
    private const string FormatVersion = "virtlab-recipe-cache 4";

    public string Root { get; } = root;

    public static string DefaultRoot()
    {
        if (Environment.GetEnvironmentVariable("VIRTLAB_CACHE") is { Length: > 0 } explicitRoot) return explicitRoot;
        var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        var baseDir = xdg is { Length: > 0 } ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(baseDir, "virtlab", "scripts");
    }

    /// <summary>The entry key: recipe path and bytes, shell and SDK builds. Not the plugins: an entry records the plugin
    /// builds its recipe uses (<see cref="CompiledRecipe.Plugins"/>), so a run knows which to load before loading any.</summary>
    public static string Key(string recipePath, byte[] recipeBytes)
    {
        var sb = new StringBuilder(FormatVersion).Append('\n');
        sb.Append(Path.GetFullPath(recipePath)).Append('\n');
        sb.Append(HashHex(recipeBytes)).Append('\n');
        sb.Append("shell ").Append(LowerHex(typeof(RecipeCache).Assembly.ManifestModule.ModuleVersionId.ToByteArray())).Append('\n');
        sb.Append("sdk ").Append(LowerHex(typeof(VirtLab.Sdk.SdkVersion).Assembly.ManifestModule.ModuleVersionId.ToByteArray())).Append('\n');
        return HashHex(Encoding.UTF8.GetBytes(sb.ToString()));
    }

    /// <summary>The entry for <paramref name="key"/> when present and every recorded file still has its hash.</summary>
    public CompiledRecipe? TryGet(string key)
    {
        var dir = Path.Combine(Root, key);
        var manifest = Path.Combine(dir, Manifest);
        if (!File.Exists(manifest)) return null;
        try
        {
            var subs = new List<CompiledRecipe.Submission>();
            var sources = new List<CompiledRecipe.FileHash>();
            var refs = new List<CompiledRecipe.FileHash>();
            var warnings = new List<string>();
            var needsWarmUp = true;
            var used = new List<CompiledRecipe.UsedPlugin>();
            var preamble = -1;
            var lines = File.ReadAllLines(manifest);
            if (lines.Length == 0 || lines[0] != FormatVersion) return null;
            foreach (var line in lines.Skip(1))
            {
                var parts = line.Split('\t');
                switch (parts[0])
                {
                    case "source" or "ref" when parts.Length == 3:
                        if (!File.Exists(parts[2]) || Hash(parts[2]) != parts[1]) return null;
                        (parts[0] == "source" ? sources : refs).Add(new(parts[2], parts[1]));
                        break;
                    case "submission" when parts.Length == 4:
                        var path = Path.Combine(dir, parts[1]);
                        if (!File.Exists(path)) return null;
                        var image = File.ReadAllBytes(path);
                        if (HashHex(image) != parts[3]) return null;
                        subs.Add(new(parts[2].Length == 0 ? null : parts[2], image));
                        break;
                    case "warning" when parts.Length == 2:
                        warnings.Add(parts[1]);
                        break;
                    case "warmup" when parts.Length == 2:
                        needsWarmUp = parts[1] != "no";
                        break;
                    case "plugin" when parts.Length == 4 && Guid.TryParse(parts[2], out var mvid):
                        used.Add(new(parts[1], mvid, parts[3]));
                        break;
                    case "preamble" when parts.Length == 2 && int.TryParse(parts[1], out var index):
                        preamble = index;
                        break;
                    case "end": return new CompiledRecipe(subs, sources, refs, warnings) { NeedsWarmUp = needsWarmUp, Plugins = used, PreambleIndex = preamble };
                }
            }
            return null; // no "end": a torn write
        }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>Stores an entry atomically (written beside, then renamed). Failing to store (unwritable cache, a
    /// concurrent writer of the same key) is not an error: running the recipe is what matters.</summary>
    /// <param name="plugins">The plugins it was compiled against: the entry records those its own code uses.</param>
    public void Store(string key, CompiledRecipe recipe, PluginSet? plugins = null)
    {
        var needsWarmUp = recipe.NeedsWarmUp;
        var used = UsedPlugins(recipe.Submissions, plugins ?? PluginSet.Empty, recipe.References.Select(r => r.Path));
        var final = Path.Combine(Root, key);
        var tmp = Path.Combine(Root, $".{key}.{Environment.ProcessId}.{Guid.NewGuid():N}");
        try
        {
            Directory.CreateDirectory(tmp);
            var sb = new StringBuilder(FormatVersion).Append('\n');
            foreach (var s in recipe.Sources) sb.Append("source\t").Append(s.Hash).Append('\t').Append(s.Path).Append('\n');
            foreach (var r in recipe.References) sb.Append("ref\t").Append(r.Hash).Append('\t').Append(r.Path).Append('\n');
            // A preamble no other submission refers to (the recipe names no plugin global) is left out of the entry:
            // a cached run neither loads nor binds it.
            var (preamble, referenced) = Preamble(recipe.Submissions);
            var dropped = referenced ? -1 : preamble;
            for (int i = 0, n = 0; i < recipe.Submissions.Count; i++)
            {
                if (i == dropped) continue;
                if (i == preamble) sb.Append("preamble\t").Append(n).Append('\n');
                var file = $"{n++}.dll";
                var image = recipe.Submissions[i].Image;
                File.WriteAllBytes(Path.Combine(tmp, file), image);
                sb.Append("submission\t").Append(file).Append('\t').Append(recipe.Submissions[i].TypeName)
                  .Append('\t').Append(HashHex(image)).Append('\n');
            }
            sb.Append("warmup\t").Append(needsWarmUp ? "yes" : "no").Append('\n');
            foreach (var p in used) sb.Append("plugin\t").Append(p.AssemblyName).Append('\t').Append(p.Mvid).Append('\t').Append(p.GlobalName).Append('\n');
            foreach (var w in recipe.Warnings) sb.Append("warning\t").Append(w.ReplaceLineEndings(" ").Replace('\t', ' ')).Append('\n');
            sb.Append("end\n");
            File.WriteAllText(Path.Combine(tmp, Manifest), sb.ToString());
            if (Directory.Exists(final))
            {
                if (TryGet(key) is { } other && other.Plugins!.SequenceEqual(used)) return; // another process stored it meanwhile
                Directory.Delete(final, recursive: true); // stale: a #load-ed file changed
            }
            Directory.Move(tmp, final);
            Prune();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        finally
        {
            try { if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
        }
    }

    /// <summary>Keeps the cache bounded: past <see cref="MaxEntries"/> entries the least recently written go.</summary>
    private void Prune()
    {
        var entries = new DirectoryInfo(Root).GetDirectories().Where(d => !d.Name.StartsWith('.')).ToList();
        if (entries.Count <= MaxEntries) return;
        foreach (var d in entries.OrderBy(d => d.LastWriteTimeUtc).Take(entries.Count - MaxEntries * 3 / 4))
            try { d.Delete(recursive: true); } catch (IOException) { }
    }

    public const int MaxEntries = 256;

    /// <summary>
    /// Whether running these submissions needs the process warm-up (SDK hot paths, plugin WarmUp): the recipe's own
    /// submissions (not the plugin preamble, which names every plugin) reference a type of the SDK's machine, device,
    /// native or plugin namespaces, or of any assembly other than the framework, Spectre.Console and other
    /// submissions (a plugin, Iced, a #r library). A recipe that only computes and reports (Result, Stage, Expect) does
    /// not: its run skips the ~0.1 CPU-s warm-up thread. Unreadable metadata counts as needing it.
    /// </summary>
    public static bool NeedsWarmUp(IReadOnlyList<CompiledRecipe.Submission> submissions)
    {
        foreach (var s in submissions)
        {
            try
            {
                using var pe = new PEReader(new MemoryStream(s.Image, writable: false));
                var md = pe.GetMetadataReader();
                if (md.GetString(md.GetAssemblyDefinition().Name).EndsWith("-0", StringComparison.Ordinal)) continue; // the plugin preamble
                foreach (var h in md.TypeReferences)
                {
                    var t = md.GetTypeReference(h);
                    var ns = md.GetString(t.Namespace);
                    while (t.ResolutionScope.Kind == HandleKind.TypeReference) // nested: the outermost type says where it lives
                    {
                        t = md.GetTypeReference((TypeReferenceHandle)t.ResolutionScope);
                        ns = md.GetString(t.Namespace);
                    }
                    if (t.ResolutionScope.Kind != HandleKind.AssemblyReference) continue;
                    var asm = md.GetString(md.GetAssemblyReference((AssemblyReferenceHandle)t.ResolutionScope).Name);
                    if (asm == "VirtLab.Sdk") { if (ns is not ("VirtLab.Sdk" or "VirtLab.Sdk.Measure" or "VirtLab.Sdk.Rendering")) return true; }
                    else if (!(asm.StartsWith("System", StringComparison.Ordinal) || asm.StartsWith("Microsoft.", StringComparison.Ordinal)
                               || asm is "mscorlib" or "netstandard" or "Spectre.Console" || asm.StartsWith("virtlab-recipe-", StringComparison.Ordinal)))
                        return true;
                }
            }
            catch (Exception e) when (e is BadImageFormatException or InvalidOperationException) { return true; }
        }
        return false;
    }

    /// <summary>
    /// A guess, before compiling, that <paramref name="source"/> needs no warm-up (<see cref="NeedsWarmUp"/> decides after
    /// the compile): no <c>#r</c> or <c>#load</c>, no identifier naming a public type of the SDK outside its computing
    /// and reporting namespaces (read from its metadata: no type loads), and no plugin loaded for it (a run loads them
    /// only for a source that names one, <see cref="PluginVocabulary"/>). A wrong "cold" only starts the warm-up after
    /// the compile instead of beside it.
    /// </summary>
    public static bool LooksCold(string source, PluginSet plugins)
    {
        if (PluginVocabulary.PullsInCode(source)) return false;
        var warm = new HashSet<string>(StringComparer.Ordinal);
        try
        {
            using var pe = new PEReader(File.OpenRead(typeof(VirtLab.Sdk.Measure.Size).Assembly.Location));
            var md = pe.GetMetadataReader();
            foreach (var h in md.TypeDefinitions)
            {
                var t = md.GetTypeDefinition(h);
                if ((t.Attributes & System.Reflection.TypeAttributes.VisibilityMask) != System.Reflection.TypeAttributes.Public) continue;
                if (md.GetString(t.Namespace) is "VirtLab.Sdk" or "VirtLab.Sdk.Measure" or "VirtLab.Sdk.Rendering") continue;
                var name = md.GetString(t.Name);
                var tick = name.IndexOf('`');
                warm.Add(tick < 0 ? name : name[..tick]);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or BadImageFormatException or InvalidOperationException or ArgumentException) { return false; }
        return !plugins.Loaded.Any() && !PluginVocabulary.Identifiers(source).Any(warm.Contains);
    }

    private static bool IsPreamble(MetadataReader md) => md.GetString(md.GetAssemblyDefinition().Name).EndsWith("-0", StringComparison.Ordinal);

    /// <summary>Index of the plugin preamble among the submissions (-1: none), and whether another submission refers to
    /// its assembly (an unreadable image counts as referring to it), from one read of each image's metadata.</summary>
    private static (int Index, bool Referenced) Preamble(IReadOnlyList<CompiledRecipe.Submission> submissions)
    {
        int index = -1;
        string? name = null;
        var referenced = new HashSet<string>(StringComparer.Ordinal);
        var unreadable = false;
        for (int i = 0; i < submissions.Count; i++)
            try
            {
                using var pe = new PEReader(new MemoryStream(submissions[i].Image, writable: false));
                var md = pe.GetMetadataReader();
                if (IsPreamble(md)) { index = i; name = md.GetString(md.GetAssemblyDefinition().Name); continue; }
                foreach (var h in md.AssemblyReferences) referenced.Add(md.GetString(md.GetAssemblyReference(h).Name));
            }
            catch (Exception e) when (e is BadImageFormatException or InvalidOperationException) { unreadable = true; }
        return (index, index >= 0 && (unreadable || referenced.Contains(name!)));
    }

    /// <summary>
    /// The loaded plugins the recipe's own submissions (not the preamble) use: those whose assembly they reference, or
    /// whose global (a field of the preamble submission) they name. A reference to any other assembly beyond the
    /// framework, the SDK, Spectre.Console, Iced, #r files and other submissions (a plugin's private dependency, say)
    /// counts as using every plugin, as does unreadable metadata.
    /// </summary>
    public static IReadOnlyList<CompiledRecipe.UsedPlugin> UsedPlugins(IReadOnlyList<CompiledRecipe.Submission> submissions, PluginSet plugins, IEnumerable<string>? referencePaths = null)
    {
        var loaded = plugins.Loaded.ToList();
        var all = loaded.Select(p => new CompiledRecipe.UsedPlugin(p.AssemblyName, p.Mvid, p.GlobalName!)).ToList();
        var refs = new HashSet<string>((referencePaths ?? []).Select(Path.GetFileNameWithoutExtension).OfType<string>(), StringComparer.OrdinalIgnoreCase);
        var used = new HashSet<PluginInfo>();
        foreach (var s in submissions)
        {
            try
            {
                using var pe = new PEReader(new MemoryStream(s.Image, writable: false));
                var md = pe.GetMetadataReader();
                if (IsPreamble(md)) continue;
                foreach (var h in md.AssemblyReferences)
                {
                    var name = md.GetString(md.GetAssemblyReference(h).Name);
                    if (loaded.FirstOrDefault(p => string.Equals(p.AssemblyName, name, StringComparison.OrdinalIgnoreCase)) is { } plugin) { used.Add(plugin); continue; }
                    if (name.StartsWith("System", StringComparison.Ordinal) || name.StartsWith("Microsoft.", StringComparison.Ordinal)
                        || name is "mscorlib" or "netstandard" or "Spectre.Console" or "Iced" or "VirtLab.Sdk"
                        || name.StartsWith("virtlab-", StringComparison.Ordinal) || refs.Contains(name)) continue;
                    return all;
                }
                foreach (var h in md.MemberReferences)
                {
                    var m = md.GetMemberReference(h);
                    if (m.Parent.Kind != HandleKind.TypeReference) continue;
                    var t = md.GetTypeReference((TypeReferenceHandle)m.Parent);
                    if (t.ResolutionScope.Kind != HandleKind.AssemblyReference) continue;
                    if (!md.GetString(md.GetAssemblyReference((AssemblyReferenceHandle)t.ResolutionScope).Name).EndsWith("-0", StringComparison.Ordinal)) continue;
                    var member = md.GetString(m.Name);
                    if (loaded.FirstOrDefault(p => p.GlobalName == member) is { } plugin) used.Add(plugin);
                }
            }
            catch (Exception e) when (e is BadImageFormatException or InvalidOperationException) { return all; }
        }
        return all.Where(u => used.Any(p => p.AssemblyName == u.AssemblyName)).ToList();
    }

    public static string Hash(string path)
    {
        using var f = File.OpenRead(path);
        var h = new XxHash128();
        h.Append(f);
        Span<byte> hash = stackalloc byte[16];
        h.GetCurrentHash(hash);
        return LowerHex(hash);
    }

    /// <summary>XxHash128 of <paramref name="data"/> as 32 lowercase hex digits.</summary>
    internal static string HashHex(ReadOnlySpan<byte> data)
    {
        Span<byte> hash = stackalloc byte[16];
        XxHash128.Hash(data, hash);
        return LowerHex(hash);
    }

    /// <summary>Lowercase hex by a plain loop: Convert.ToHexStringLower and Guid formatting take Vector128 paths no
    /// ReadyToRun image holds, i.e. 8 methods JIT-compiled on every cached run.</summary>
    internal static string LowerHex(ReadOnlySpan<byte> bytes)
    {
        const string digits = "0123456789abcdef";
        var chars = new char[bytes.Length * 2];
        for (var i = 0; i < bytes.Length; i++)
        {
            chars[2 * i] = digits[bytes[i] >> 4];
            chars[2 * i + 1] = digits[bytes[i] & 0xF];
        }
        return new string(chars);
    }
}
