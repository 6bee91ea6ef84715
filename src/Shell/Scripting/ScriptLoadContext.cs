using System.Reflection;
using System.Runtime.Loader;
using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Scripting;

/// <summary>
/// Holds the compiled submissions of one session or recipe run. A submission refers to the previous ones by
/// assembly name, to plugins by their assembly names (answered with the plugin contexts' own assemblies, so
/// a plugin's types are the ones its global was created from) and to everything else in the default context.
/// Not collectible: Roslyn submissions cannot be unloaded; the REPL recycles the whole host process instead.
/// </summary>
public sealed class ScriptLoadContext : AssemblyLoadContext
{
    private readonly PluginSet _plugins;
    // Load runs on whatever thread first touches a type (a script's background task included) while the
    // session adds submissions: both maps are guarded.
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Assembly> _submissions = new(StringComparer.OrdinalIgnoreCase);
    private readonly Dictionary<string, string> _referencePaths = new(StringComparer.OrdinalIgnoreCase);

    public ScriptLoadContext(PluginSet plugins, string name = "virtlab-scripts") : base(name, isCollectible: false) => _plugins = plugins;

    public Assembly AddSubmission(byte[] image)
    {
        var asm = LoadFromStream(new MemoryStream(image, writable: false));
        lock (_lock) _submissions[asm.GetName().Name!] = asm;
        return asm;
    }

    /// <summary>An assembly a script named with <c>#r "path"</c>; loaded on first use.</summary>
    public void AddReferencePath(string path)
    {
        lock (_lock) _referencePaths[Path.GetFileNameWithoutExtension(path)] = path;
    }

    /// <summary>The <c>#r</c> files added so far (a <c>#r "nuget: …"</c> adds its package's whole closure).</summary>
    public IReadOnlyList<string> ReferencePaths { get { lock (_lock) return [.. _referencePaths.Values]; } }

    public bool Owns(Assembly assembly) => GetLoadContext(assembly) == this;

    protected override Assembly? Load(AssemblyName name)
    {
        var simple = name.Name;
        if (simple is null) return null;
        Assembly? sub;
        string? path;
        lock (_lock)
        {
            _submissions.TryGetValue(simple, out sub);
            _referencePaths.TryGetValue(simple, out path);
        }
        if (sub is not null) return sub;
        foreach (var p in _plugins.Loaded)
        {
            if (string.Equals(p.Assembly!.GetName().Name, simple, StringComparison.OrdinalIgnoreCase)) return p.Assembly;
            if (p.ResolvePrivate(name) is { } privateCopy) return privateCopy;
        }
        if (path is not null) return LoadFromAssemblyPath(path);
        return null; // default context: framework, VirtLab.Sdk, Spectre.Console, Iced
    }
}

/// <summary>
/// Runs submissions: each compiled submission class has <c>static Task&lt;object&gt; &lt;Factory&gt;(object[] submissionArray)</c>;
/// slot 0 of the array is the globals object, and each submission stores itself in its own slot so the
/// following ones reach its variables. Knows nothing of Roslyn (the cached recipe path uses it alone).
/// </summary>
public sealed class SubmissionExecutor
{
    private object?[] _state;
    private int _runs;

    public SubmissionExecutor(object globals, ScriptLoadContext context)
    {
        Context = context;
        _state = new object?[16];
        _state[0] = globals;
    }

    public ScriptLoadContext Context { get; }
    public object Globals => _state[0]!;

    /// <summary>
    /// Takes the plugin preamble's place without running it: its submission object, created uninitialised, with only
    /// the given globals set. Running it would bind every plugin it declares, loading the unused ones too; an unset
    /// global's field type (a reference type of a plugin left unloaded) is never resolved.
    /// </summary>
    public void BindPreamble(Assembly assembly, string submissionTypeName, IReadOnlyDictionary<string, object> globals)
    {
        var type = SubmissionType(assembly, submissionTypeName);
        var submission = System.Runtime.CompilerServices.RuntimeHelpers.GetUninitializedObject(type);
        foreach (var (name, value) in globals)
            type.GetField(name, BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance)?.SetValue(submission, value);
        _runs++;
        if (_state.Length < _runs + 2) Array.Resize(ref _state, Math.Max(_state.Length * 2, _runs + 2));
        _state[_runs] = submission;
    }

    /// <summary>Runs a submission's factory and waits for it. Exceptions the script throws propagate unwrapped.</summary>
    public object? Run(Assembly assembly, string submissionTypeName)
    {
        var type = SubmissionType(assembly, submissionTypeName);
        var factory = type.GetMethod("<Factory>", BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Static)
                      ?? throw new InvalidOperationException($"{submissionTypeName} has no <Factory> method");
        // A submission's slot is at most the number of submissions run before it + 1 (failed ones reuse slots).
        _runs++;
        if (_state.Length < _runs + 2) Array.Resize(ref _state, Math.Max(_state.Length * 2, _runs + 2));
        // Called through a delegate, not MethodInfo.Invoke: no reflection-invoke wrapper to wrap the script's exceptions.
        var task = factory.CreateDelegate<Func<object?[], Task>>()(_state);
        task.GetAwaiter().GetResult();
        return task is Task<object?> value ? value.Result : task.GetType().GetProperty("Result")?.GetValue(task);
    }

    /// <summary>A submission's top-level type by name. A script class has no namespace (Roslyn names it
    /// <c>Script</c>): found among the module's types, which the run loads anyway, without
    /// <see cref="Assembly.GetType(string)"/>, whose type-name parser JIT-compiles its first search (~4 ms of a cached run).</summary>
    private static Type SubmissionType(Assembly assembly, string name)
    {
        if (!name.Contains('.') && !name.Contains('+'))
        {
            Type?[] types;
            try { types = assembly.GetTypes(); }
            catch (ReflectionTypeLoadException e) { types = e.Types; } // one type that cannot load (a missing #r) must not hide the rest
            foreach (var t in types)
                if (t is { Namespace: null, IsNested: false } && t.Name == name) return t;
        }
        return assembly.GetType(name, throwOnError: true)!;
    }
}
