using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Cli;

/// <summary>
/// Prepares the process for a recipe: the SDK's hot paths (<see cref="WarmUp"/>) and then each loaded plugin's
/// <c>WarmUp()</c> run on a worker thread while the main thread loads plugins and compiles or reads the cached recipe.
/// The recipe's first <c>Vm.Create</c> waits for that work to end (a recipe without VMs never waits); <see cref="Describe"/>
/// says, for the run record, how the process was prepared. <c>VIRTLAB_WARMUP=0</c> turns the warm-up off (to measure
/// what it saves).
/// </summary>
public sealed class ProcessPreparer
{
    public const string EnvironmentVariable = "VIRTLAB_WARMUP";
    private Task<WarmUpReport>? _sdk;
    private PluginSet? _plugins;
    private readonly List<string> _pluginPaths = [];
    private readonly List<string> _pluginErrors = [];

    private ProcessPreparer() { }

    public static bool Enabled => Environment.GetEnvironmentVariable(EnvironmentVariable) is not ("0" or "false" or "off");

    /// <summary>Whether <see cref="Begin"/> started the warm-up.</summary>
    public bool Started => _sdk is not null;

    /// <summary>Why the warm-up never ran although enabled (the recipe needs none), or null.</summary>
    public string? Skipped { get; private set; }

    /// <param name="begin">False leaves the worker unstarted until <see cref="Begin"/>: a run whose recipe needs no
    /// warm-up (its cache entry, or <see cref="RecipeCache.LooksCold"/> on a miss) does not pay for a thread it would never wait for.</param>
    public static ProcessPreparer Start(bool begin = true)
    {
        var p = new ProcessPreparer();
        if (begin) p.Begin();
        return p;
    }

    /// <summary>Starts the warm-up (once; nothing when turned off), with the plugins' when they are known already.</summary>
    public void Begin()
    {
        if (_sdk is not null || !Enabled) return;
        Skipped = null;
        _sdk = WarmUp.Start();
        if (_plugins is not null) Queue(_plugins);
    }

    /// <summary>Records that the warm-up was left out and why (when it had not started; a started one runs on).</summary>
    public void Skip(string why)
    {
        if (_sdk is null && Enabled) Skipped = why;
    }

    /// <summary>Queues the loaded plugins' warm-ups after the SDK's (plugin code runs on SDK paths already warm).</summary>
    public void AddPlugins(PluginSet plugins)
    {
        _plugins = plugins;
        if (_sdk is not null) Queue(plugins);
    }

    private void Queue(PluginSet plugins)
    {
        foreach (var p in plugins.Loaded.Where(p => p.Plugin is not null))
            WarmUp.Then(() =>
            {
                try { p.Plugin!.WarmUp(); lock (_pluginPaths) _pluginPaths.Add($"plugin {p.Name}"); }
                catch (Exception e)
                {
                    e = RecipeContext.Unwrap(e)!;
                    lock (_pluginPaths) _pluginErrors.Add($"plugin {p.Name}: {e.GetType().Name}: {e.Message}");
                }
            });
    }

    /// <summary>The launch layout's (artifacts/launch/, its runtimeconfig names the composite) or the build output's.</summary>
    public static string LayoutDescription =>
        AppContext.GetData("VirtLab.Composite") is string key
            ? $"launch layout: self-contained (runtime {Environment.Version}), framework + NuGet packages in one composite ReadyToRun image ({key}); shell and SDK per-assembly ReadyToRun, plugins as listed"
            : $"build output: framework-dependent (shared runtime {Environment.Version}); images per assembly as listed";

    /// <summary>How the process was prepared (call it once the recipe has run). Waits for the warm-up to end only when
    /// the recipe waited for it (it made a VM): a recipe that never needed it exits at once, and the record says the
    /// warm-up was still running.</summary>
    /// <param name="compile">How the recipe was compiled: "cached", "in-process (why)" or "server (warm, …)".</param>
    public Preparation Describe(PluginSet plugins, long jitBeforeRecipe, string? compile = null)
    {
        if (WarmUp.WasAwaited) WarmUp.WaitForPending();
        var sdk = _sdk is { IsCompleted: true } done ? done.GetAwaiter().GetResult() : null;
        var unfinished = _sdk is { IsCompleted: false };
        var images = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (var a in new[] { typeof(ProcessPreparer).Assembly, typeof(Vm).Assembly, typeof(Spectre.Console.AnsiConsole).Assembly, typeof(Iced.Intel.Instruction).Assembly })
            images[a.GetName().Name!] = Preparation.ImageKind(a.Location);
        foreach (var p in plugins.Loaded) images[$"plugin {p.Name}"] = Preparation.ImageKind(p.Path);
        lock (_pluginPaths)
            return new Preparation
            {
                Images = images,
                Layout = LayoutDescription,
                Runtime = Preparation.RuntimeSettings(),
                ScriptCode = ScriptOptimization.Description,
                WarmedUp = sdk is null ? (unfinished ? ["(still running when the recipe ended: it made no VM, so it did not wait)"] : []) : [.. sdk.Paths, .. _pluginPaths],
                WarmUpBackend = sdk?.Backend,
                WarmUpSkipped = Skipped,
                Compile = compile,
                WarmUpSeconds = sdk?.Seconds ?? 0,
                WarmUpWaitSeconds = WarmUp.WaitedSeconds,
                SettleSeconds = WarmUp.SettleSeconds,
                WarmUpErrors = [.. sdk?.Errors ?? [], .. _pluginErrors],
                JitCompiledBeforeRecipe = jitBeforeRecipe,
                JitCompiledDuringRecipe = System.Runtime.JitInfo.GetCompiledMethodCount() - jitBeforeRecipe,
            };
    }
}
