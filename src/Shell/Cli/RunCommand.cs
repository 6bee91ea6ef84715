using System.Reflection;
using System.Runtime.CompilerServices;
using Spectre.Console;
using VirtLab.Sdk;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Rendering;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Cli;

public sealed record RunOptions(string File, string? JsonPath, IReadOnlyList<string> PluginDirectories, bool TestMode,
    IReadOnlyList<string> Arguments, bool NoCache = false, string? PlotsDirectory = null, string PlotFormat = "png");

/// <summary>
/// <c>virtlab run</c>: load plugins, take the compiled recipe from the cache or compile it, run it in-process,
/// print results, write the run record, map the outcome to the documented exit code.
/// </summary>
public static class RunCommand
{
    public static int Execute(RunOptions o)
    {
        var err = Console.Error;
        if (!File.Exists(o.File))
        {
            err.WriteLine(Directory.Exists(o.File) ? $"virtlab run: {o.File} is a folder; expected a recipe file (.csx)" : $"virtlab run: recipe not found: {o.File}");
            return ExitCodes.Usage;
        }
        StartupTrace.Mark("run: parsed");
        var verbose = Environment.GetEnvironmentVariable("VIRTLAB_VERBOSE") is "1" or "true";
        // A live progress bar on a terminal only; installed before Consoles binds to Console.Out (it wraps it).
        using var progress = o.JsonPath == "-" ? null : TerminalProgress.InstallIfTerminal();
        err = Console.Error;
        // Recipes and plugins may write through Spectre's static AnsiConsole, whose own detection emits ANSI into a
        // pipe (it looks at TERM, not at the redirection): give it the console that knows.
        Consoles.BindAnsiConsole();

        RecipeArgs args;
        try { args = new RecipeArgs(o.Arguments); }
        catch (ArgumentException e) { err.WriteLine($"virtlab run: {e.Message}"); return ExitCodes.Usage; }
        if (o.JsonPath is not null && RecordPathProblem(o.JsonPath) is { } problem)
        {
            err.WriteLine($"virtlab run: --json {o.JsonPath}: {problem}; nothing ran");
            return ExitCodes.Usage;
        }

        // Warm the SDK's hot paths (then the plugins') on a worker thread: on a cache hit whose recipe needs it, while
        // plugins load; on a miss, after the compile and only when the compiled recipe needs it (below).
        StartupTrace.Mark("run: consoles");
        var bytes = File.ReadAllBytes(o.File);
        var cache = new RecipeCache(RecipeCache.DefaultRoot());
        var preparer = ProcessPreparer.Start(begin: false);
        using var cts = new CancellationTokenSource();
        // First Ctrl+C asks the recipe to stop (Cancellation); the second one ends the process.
        ConsoleCancelEventHandler onCancel = (_, e) => { if (!cts.IsCancellationRequested) { e.Cancel = true; cts.Cancel(); } };
        Console.CancelKeyPress += onCancel;
        try
        {
            var context = new RecipeContext(args, o.TestMode, cts.Token) { Show = v => ValueRenderer.Write(Consoles.Out, v) };
            // A cache hit loads and initialises only the plugins its recipe uses (the entry says which), so a recipe
            // that uses none starts none; a stale entry (a used plugin rebuilt or gone) compiles as a miss.
            // An unused plugin is not loaded, so its load errors show on runs whose recipe names a plugin.
            var key = RecipeCache.Key(o.File, bytes);
            var recipe = o.NoCache ? null : cache.TryGet(key);
            // A miss compiles here unless a compile server is up: open the compiler's references meanwhile.
            if (recipe is null && !CompileServer.IsListening) PrepareFirstCompileSoon();
            if (recipe is { NeedsWarmUp: true }) preparer.Begin();
            var paths = new PluginSearchPaths(o.PluginDirectories);
            string? source = null; // decoded as the compile reads it (a BOM says the encoding), only when it compiles
            PluginSet plugins;
            // One that uses none, with no plugin folder named (--plugins, VIRTLAB_PLUGINS), does not even look for plugins.
            if (recipe?.Plugins is { Count: 0 } && !paths.NamedRoots().Any()) plugins = PluginSet.Empty;
            else
            {
                plugins = PluginSet.Load(paths, ScriptPreamble.ReservedNames(typeof(RecipeGlobals)), err,
                    recipe?.Plugins is { } used ? name => used.Any(u => string.Equals(u.AssemblyName, name, StringComparison.OrdinalIgnoreCase)) : _ => false);
                if (recipe is not null && !recipe.PluginsMatch(plugins)) recipe = null;
                // A recipe to compile gets the plugins only when its source names one of them (PluginVocabulary, read
                // from their metadata): one that names none compiles and runs as it would beside them, without loading
                // them (~45 ms for the four built-in ones) or compiling their preamble.
                if (recipe is null && plugins.HasUnused && PluginVocabulary.Names(source ??= Decode(bytes), plugins)) plugins.LoadRest();
            }
            ReportLoadErrors(plugins.All, err);
            preparer.AddPlugins(plugins);
            StartupTrace.Mark("run: plugins loaded");
            StartupTrace.Mark(recipe is null ? "run: cache miss" : "run: cache hit");
            if (recipe is { NeedsWarmUp: false }) preparer.Skip("the cached recipe uses no VM, device or plugin");
            // A miss whose source names no VM, device or plugin type (RecipeCache.LooksCold) compiles alone: beside the
            // compile the warm-up competed for the CPUs (2 here) and slowed every first run of a recipe that never
            // needed it.
            else if (recipe is not null || !RecipeCache.LooksCold(source ??= Decode(bytes), plugins)) preparer.Begin();
            if (verbose) err.WriteLine($"virtlab: recipe cache {(recipe is null ? "miss" : "hit")} ({Path.Combine(cache.Root, key)})");
            var compileHow = recipe is null ? null : "cached";
            if (recipe is null)
            {
                var compileWatch = System.Diagnostics.Stopwatch.StartNew();
                var (compiled, errors, how) = CompileAnyWay(o.File, source ??= Decode(bytes), plugins, key);
                // Compiled without the plugins (its source names none of them) and failed: a name reached a plugin in a
                // way PluginVocabulary does not read (an attribute's short name, a pattern-based call): with them, again.
                if (compiled is null && plugins.HasUnused)
                {
                    var unused = plugins.All.Where(p => p.Status == PluginStatus.Unused).ToList();
                    plugins.LoadRest();
                    ReportLoadErrors(unused, err); // those found before were reported then
                    (compiled, errors, how) = CompileAnyWay(o.File, source, plugins, key);
                    how += "; again with the plugins";
                }
                compileHow = $"{how}; {compileWatch.ElapsedMilliseconds} ms in all";
                if (verbose) err.WriteLine($"virtlab: compiled in {compileWatch.ElapsedMilliseconds} ms: {how}");
                if (compiled is null)
                {
                    foreach (var d in errors) err.WriteLine(d);
                    err.WriteLine($"virtlab run: {errors.Count} compile error{(errors.Count == 1 ? "" : "s")}; nothing ran");
                    WriteRecord(o, context, plugins, null, ExitCodes.CompileError, err, preparer.Describe(plugins, System.Runtime.JitInfo.GetCompiledMethodCount(), compileHow));
                    return ExitCodes.CompileError;
                }
                recipe = compiled;
                if (!o.NoCache) cache.Store(key, recipe, plugins);
                // Guessed cold but it is not: start the warm-up now and wait for it before the recipe's first statement,
                // so no timed stage (a Stage around Vm.Create) includes it.
                if (!preparer.Started && recipe.NeedsWarmUp) { preparer.Begin(); VirtLab.Sdk.Machine.WarmUp.WaitForPending(); }
                else if (!preparer.Started) preparer.Skip("the recipe uses no VM, device or plugin");
            }
            StartupTrace.Mark("run: compiled");
            // Warnings never change the exit code; a cached run shows the same ones as the run that compiled it.
            foreach (var w in recipe.Warnings) err.WriteLine(w);

            var scripts = new ScriptLoadContext(plugins, "virtlab-recipe");
            foreach (var r in recipe.References) scripts.AddReferencePath(r.Path);
            var executor = new SubmissionExecutor(new RecipeGlobals(context, ScriptPreamble.PluginGlobals(plugins)), scripts);
            var jitBeforeRecipe = System.Runtime.JitInfo.GetCompiledMethodCount();
            Exception? error = null;
            object? value = null;
            // An exception on a thread the recipe started (new Thread, async void) ends the process: record it first.
            var end = new RunEnd(o, context, plugins, scripts);
            using var background = end.WatchBackgroundFailures();
            try
            {
                using var ambient = RunCancellation.Enter(cts.Token); // Ctrl+C stops SDK calls that were given no token
                for (int i = 0; i < recipe.Submissions.Count; i++)
                {
                    var s = recipe.Submissions[i];
                    if (s.TypeName is null) continue;
                    if (i == recipe.PreambleIndex && recipe.Plugins is not null) executor.BindPreamble(scripts.AddSubmission(s.Image), s.TypeName, ScriptPreamble.PluginGlobals(plugins));
                    else value = executor.Run(scripts.AddSubmission(s.Image), s.TypeName);
                }
            }
            catch (Exception e) { error = e; }
            StartupTrace.Mark("run: recipe ran");
            Console.Out.Flush();
            // A recipe ending in an expression (no semicolon) shows its value, as the REPL would.
            if (error is null && value is not null) ValueRenderer.Write(Consoles.Out, value);
            error ??= end.UnobservedTaskFailure();
            // Only a run record needs the warm-up's outcome: without one a recipe that made no VM exits without waiting for it.
            var preparation = o.JsonPath is null ? null : preparer.Describe(plugins, jitBeforeRecipe, compileHow);
            foreach (var e in preparation?.WarmUpErrors ?? []) err.WriteLine($"virtlab: warning: warm-up of {e}");
            var exit = end.Finish(error, preparation);
            StartupTrace.Mark("run: finished");
            if (verbose)
                err.WriteLine($"virtlab: roslyn loaded: {(AppDomain.CurrentDomain.GetAssemblies().Any(a => a.GetName().Name!.StartsWith("Microsoft.CodeAnalysis", StringComparison.Ordinal)) ? "yes" : "no")}");
            return exit;
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }

    private static string Decode(byte[] bytes) => new StreamReader(new MemoryStream(bytes), detectEncodingFromByteOrderMarks: true).ReadToEnd();

    private static void ReportLoadErrors(IEnumerable<PluginInfo> plugins, TextWriter err)
    {
        foreach (var p in plugins.Where(p => p.Status == PluginStatus.Error))
            err.WriteLine($"virtlab: plugin {p.Name} not loaded ({p.Path}): {p.Error}");
    }

    /// <summary>By the compile server when one answers (Cli/CompileServer), else in-process; also says how.</summary>
    private static (CompiledRecipe?, IReadOnlyList<string>, string How) CompileAnyWay(string file, string text, PluginSet plugins, string key)
    {
        if (CompileServer.TryCompile(file, text, CompileInputs.From(plugins), key[..12], out var why) is { } served)
            return (served.Recipe, served.Errors, served.How);
        var (recipe, errors) = Compile(file, text, plugins, key);
        return (recipe, errors, $"in-process ({why})");
    }

    // Kept out of Execute, as Compile is: a cache hit never loads Roslyn.
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static void PrepareFirstCompileSoon() => ScriptCompiler.PrepareFirstCompileInBackground(typeof(RecipeGlobals));

    // Kept out of Execute so that a cache hit never makes the JIT load Roslyn.
    /// <returns>The recipe, or null and its errors (each "file(line,col): error CSxxxx: message").</returns>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static (CompiledRecipe?, IReadOnlyList<string>) Compile(string file, string text, PluginSet plugins, string key)
    {
        var (recipe, diags) = RecipeBuilder.Compile(file, text, plugins, key[..12]);
        return (recipe, recipe is null ? diags.Where(d => d.IsError).Select(d => d.Formatted).ToList() : []);
    }

    private static void PrintOutcome(RecipeContext context, Exception? error, int exit, ScriptLoadContext scripts)
    {
        var err = Console.Error;
        if (!context.Stages.IsEmpty) ValueRenderer.Write(Consoles.Out, context.Stages);
        foreach (var r in context.Results)
        {
            // A one-line result is plain text: written as it is (Spectre would wrap it at the console's width).
            var renderable = ValueRenderer.IsPlain(r.Value) ? null : ValueRenderer.ToRenderable(r.Value);
            if (renderable is null or Text) Consoles.OutWriter.WriteLine($"{r.Name} = {ValueRenderer.Inline(r.Value)}");
            else { Consoles.OutWriter.WriteLine($"{r.Name} ="); Consoles.Out.Write(renderable); }
        }
        switch (RecipeContext.Unwrap(error))
        {
            case null:
                var failed = context.Expectations.Count(e => !e.Passed);
                if (failed > 0) err.WriteLine($"virtlab run: {failed} of {context.Expectations.Count} expectation{(context.Expectations.Count == 1 ? "" : "s")} failed");
                break;
            case RequirementMissingException rm:
                err.WriteLine($"skipped: {rm.Reason}");
                break;
            case RecipeArgumentException ra:
                err.WriteLine($"virtlab run: {ra.Message}");
                break;
            case OperationCanceledException when context.Cancellation.IsCancellationRequested:
                err.WriteLine("virtlab run: cancelled (Ctrl+C)");
                break;
            case VirtLab.Sdk.Machine.InsufficientHugePagesException hp:
                err.WriteLine($"skipped: {hp.Message}");
                break;
            case { } other:
                err.Write(ScriptExceptions.Format(other, scripts.Owns));
                break;
        }
        foreach (var unread in context.UnreadArgs) err.WriteLine($"virtlab run: warning: --{unread} was given but the recipe never read it");
        if (context.Args.UnreadPositional is { Count: > 0 } positional)
            err.WriteLine($"virtlab run: warning: '{string.Join(' ', positional)}' given after -- but the recipe never read Args.Positional; options are --name value or --name=value");
    }

    /// <returns>Whether the record was written (or none was asked for).</returns>
    private static bool WriteRecord(RunOptions o, RecipeContext context, PluginSet plugins, Exception? error, int exit, TextWriter err,
        Preparation? preparation = null, IReadOnlyList<PlotFile>? plots = null, IEnumerable<string>? references = null)
    {
        if (o.JsonPath is null) return true;
        try
        {
            var env = EnvironmentInfo.Capture(VirtlabVersion, plugins.Loaded.ToDictionary(p => p.Name, p => p.Version ?? "?"), o.File, VirtlabCommit)
                with { Preparation = preparation };
            // #r "nuget: …": every package of the restored closure, as Name/Version.
            var packages = references?.Any() == true ? PackagesOf(references) : [];
            (RunRecord.Create(context, RecipeInfo.FromFile(o.File), env, error, exit) with { Plots = plots, Packages = packages.Count > 0 ? packages : null }).Write(o.JsonPath);
            return true;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            err.WriteLine($"virtlab run: cannot write the run record to {o.JsonPath}: {e.Message}");
            return false;
        }
    }

    // Apart: NuGetMetadataResolver derives from a Roslyn type, so naming it loads Roslyn (not on a cached run's record).
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static List<string> PackagesOf(IEnumerable<string> references) =>
        references.Select(NuGetMetadataResolver.PackageOf).OfType<string>().Distinct().Order(StringComparer.Ordinal).ToList();

    /// <summary>Why the run record cannot go to <paramref name="path"/> (checked before the run, by creating its folder
    /// and the temporary file the record is written through), or null.</summary>
    private static string? RecordPathProblem(string path)
    {
        if (Directory.Exists(path)) return "is a folder; give a file path for the run record";
        try
        {
            var full = Path.GetFullPath(path);
            Directory.CreateDirectory(Path.GetDirectoryName(full)!);
            using (new FileStream(full + ".tmp", FileMode.Create, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose)) { }
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            return $"cannot be written ({e.Message})";
        }
    }

    /// <summary>
    /// The end of a run, which the main thread or a dying background thread reaches first: prints the outcome, writes
    /// the run record once and picks the exit code. A background thread's exception ends the process (the runtime
    /// allows nothing else), so that path records the failure and exits 1 itself.
    /// </summary>
    private sealed class RunEnd(RunOptions o, RecipeContext context, PluginSet plugins, ScriptLoadContext scripts)
    {
        private readonly Lock _gate = new();
        private bool _ended;
        private AggregateException? _unobserved;
        // Collections so far: made right before the recipe runs, so its garbage can be no older than what ran since.
        private readonly int _gen0Before = GC.CollectionCount(0), _gen1Before = GC.CollectionCount(1);

        public IDisposable WatchBackgroundFailures()
        {
            UnhandledExceptionEventHandler onThread = (_, e) =>
            {
                var ex = e.ExceptionObject as Exception ?? new Exception($"a thread failed with {e.ExceptionObject}");
                Console.Out.Flush();
                Console.Error.WriteLine("virtlab run: a thread the recipe started failed, which ends the process:");
                bool first;
                lock (_gate) first = !_ended;
                if (first) Finish(ex);
                else Console.Error.Write(ScriptExceptions.Format(ex, scripts.Owns)); // after the record: shown, not recorded
                Console.Out.Flush();
                Console.Error.Flush();
                Environment.Exit(ExitCodes.Failure);
            };
            EventHandler<UnobservedTaskExceptionEventArgs> onTask = (_, e) =>
            {
                e.SetObserved();
                lock (_gate) _unobserved ??= e.Exception;
            };
            AppDomain.CurrentDomain.UnhandledException += onThread;
            TaskScheduler.UnobservedTaskException += onTask;
            return new Unsubscribe(() =>
            {
                AppDomain.CurrentDomain.UnhandledException -= onThread;
                TaskScheduler.UnobservedTaskException -= onTask;
            });
        }

        /// <summary>A faulted task nobody awaited (found by collecting the recipe's garbage): the run fails with it.</summary>
        public Exception? UnobservedTaskFailure()
        {
            // No collection since the recipe started: all it allocated is still in gen 0, and a gen-0 collection finds
            // its unreachable faulted tasks (~1 ms instead of a full collection's ~13 ms at the end of every run). After
            // gen-0 collections only, it is at most in gen 1; else collect everything.
            var generation = GC.CollectionCount(0) == _gen0Before ? 0 : GC.CollectionCount(1) == _gen1Before ? 1 : GC.MaxGeneration;
            GC.Collect(generation, GCCollectionMode.Forced, blocking: true);
            GC.WaitForPendingFinalizers();
            lock (_gate)
                return _unobserved is null ? null
                    : new AggregateException("a task the recipe started failed and nobody awaited it (an unobserved task exception)", _unobserved.InnerExceptions);
        }

        /// <summary>Prints the outcome and writes the record (once); returns the exit code. A record that could not be
        /// written makes a successful run fail.</summary>
        public int Finish(Exception? error, Preparation? preparation = null)
        {
            lock (_gate)
            {
                if (_ended) return ExitCodes.Failure;
                _ended = true;
                var exit = context.ExitCodeFor(error);
                PrintOutcome(context, error, exit, scripts);
                var plotFiles = RunPlots.Write(o, context, Console.Error);
                if (!WriteRecord(o, context, plugins, error, exit, Console.Error, preparation, plotFiles, scripts.ReferencePaths) && exit == ExitCodes.Success) exit = ExitCodes.Failure;
                return exit;
            }
        }

        private sealed class Unsubscribe(Action action) : IDisposable
        {
            public void Dispose() => action();
        }
    }

    private static string InformationalVersion =>
        typeof(RunCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "0.0.0";

    public static string VirtlabVersion => InformationalVersion.Split('+')[0];

    /// <summary>The commit this shell was built from, when the build knew it.</summary>
    public static string? VirtlabCommit => InformationalVersion.Split('+') is [_, { Length: > 0 } c, ..] ? c : null;
}

/// <summary>Exit codes of <c>virtlab run</c> (and of the other commands where they apply).</summary>
public static class ExitCodes
{
    public const int Success = 0, Failure = 1, CompileError = 2, Usage = 3, RequirementMissing = 4;

    public const string Help =
        "Exit codes: 0 success; 1 runtime exception or failed expectation; 2 compile errors (each file(line,col): message); " +
        "3 usage error (unknown option, missing file, bad recipe argument); 4 a requirement of the recipe is missing (skipped).";
}
