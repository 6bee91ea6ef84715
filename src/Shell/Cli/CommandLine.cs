using System.CommandLine;
using System.CommandLine.Help;
using VirtLab.Shell.Repl;

namespace VirtLab.Shell.Cli;

/// <summary>
/// The <c>virtlab</c> command line (System.CommandLine 3): the REPL (no command), <c>run</c>, <c>test</c>,
/// <c>plugins</c>, <c>doctor</c>, <c>pack-sdk</c>, <c>new plugin</c>, <c>init</c>, and the hidden <c>--host SOCKET</c> that starts the REPL's evaluation host.
/// Parse errors exit 3 (usage), not System.CommandLine's default 1, so scripts can tell them from failures.
/// </summary>
public static class CommandLine
{
    public static int Run(string[] argv)
    {
        if (EvaluationHostArguments(argv) is var (socket, standby, dirs))
            return EvaluationHost.Run(socket, new HostOptions { PluginDirectories = dirs, Standby = standby });
        if (SimpleRunArguments(argv) is { } simple) return WithDefaultHandler(() => RunCommand.Execute(simple));
        // Plain `virtlab`: the REPL, whose evaluation host starts first thing (the first result's critical path).
        if (argv.Length == 0) return WithDefaultHandler(() => ReplCommand.Run(new ReplOptions()));
        return Parse(argv);
    }

    // Apart from Run: a method naming System.CommandLine's types loads that assembly when it is entered, which the
    // fast paths above never need.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.NoInlining)]
    private static int Parse(string[] argv)
    {
        var root = Build();
        var parse = root.Parse(argv);
        if (parse.Errors.Count > 0)
        {
            foreach (var e in parse.Errors) Console.Error.WriteLine($"virtlab: {e.Message}");
            Console.Error.WriteLine("Run 'virtlab --help' for usage.");
            return ExitCodes.Usage;
        }
        // System.CommandLine hands an unknown "--x" to a positional argument; here that is a typo, not data.
        // Recipe arguments must come after "--".
        foreach (var t in parse.Tokens)
        {
            if (t.Type == System.CommandLine.Parsing.TokenType.DoubleDash) break;
            if (t.Type == System.CommandLine.Parsing.TokenType.Argument && t.Value.Length > 1 && t.Value[0] == '-')
            {
                Console.Error.WriteLine($"virtlab: unknown option '{t.Value}'. Recipe arguments go after --: virtlab run FILE -- {t.Value} VALUE");
                Console.Error.WriteLine("Run 'virtlab --help' for usage.");
                return ExitCodes.Usage;
            }
        }
        return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = true });
    }

    /// <summary>The evaluation host's command line, exactly as <see cref="HostClient"/> writes it (<c>--host SOCKET
    /// [--standby] [--plugins DIR]…</c>), read without building the command tree: the host's start is the REPL's first
    /// result's critical path. Null for anything else (the parser below handles it).</summary>
    internal static (string Socket, bool Standby, string[] PluginDirectories)? EvaluationHostArguments(string[] argv)
    {
        if (argv.Length < 2 || argv[0] != "--host" || argv[1].StartsWith('-')) return null;
        var standby = false;
        var dirs = new List<string>();
        for (var i = 2; i < argv.Length; i++)
        {
            if (argv[i] == "--standby") standby = true;
            else if (argv[i] == "--plugins" && i + 1 < argv.Length && !argv[i + 1].StartsWith('-')) dirs.Add(argv[++i]);
            else return null;
        }
        return (argv[1], standby, [.. dirs]);
    }

    /// <summary>The common <c>run FILE [--test] [--no-cache] [--json PATH] [--plugins DIR]… [-- ARGS…]</c>, read
    /// without building the command tree (~15 ms of a cached run's 0.1 s). Null for anything else — help, other options,
    /// a missing or extra argument, a response file, a value that looks like an option — which the full parser then
    /// handles, errors and all; <c>CommandLineTests</c> check both agree.</summary>
    internal static RunOptions? SimpleRunArguments(string[] argv)
    {
        if (argv.Length < 2 || argv[0] != "run") return null;
        string? file = null, json = null;
        bool test = false, noCache = false;
        var plugins = new List<string>();
        var recipeArgs = new List<string>();
        for (var i = 1; i < argv.Length; i++)
        {
            var t = argv[i];
            if (t.Length == 0 || t[0] == '@') return null;
            if (t == "--")
            {
                for (i++; i < argv.Length; i++)
                {
                    if (argv[i].Length == 0 || argv[i][0] == '@' || argv[i] == "--") return null;
                    recipeArgs.Add(argv[i]);
                }
                break;
            }
            switch (t)
            {
                case "--test" when !test: test = true; break;
                case "--no-cache" when !noCache: noCache = true; break;
                case "--json" when json is null && IsValue(argv, i + 1): json = argv[++i]; break;
                case "--plugins" when IsValue(argv, i + 1): plugins.Add(argv[++i]); break;
                default:
                    // A bool option's optional value ("--test true") or a second positional: the parser decides.
                    if (t[0] == '-' || file is not null || bool.TryParse(t, out _)) return null;
                    file = t;
                    break;
            }
        }
        return file is null ? null : new RunOptions(file, json, plugins, test, recipeArgs, noCache);

        static bool IsValue(string[] a, int i) => i < a.Length && a[i].Length > 0 && a[i][0] is not ('-' or '@');
    }

    /// <summary>A command as the parsed command's action runs it, with System.CommandLine's default exception handler
    /// (red "Unhandled exception: " and the exception on stderr, exit 1; nothing for a cancellation).</summary>
    private static int WithDefaultHandler(Func<int> command)
    {
        try
        {
            return command();
        }
        catch (Exception e)
        {
            if (e is not OperationCanceledException)
            {
                var color = !Console.IsOutputRedirected;
                if (color) { Console.ResetColor(); Console.ForegroundColor = ConsoleColor.Red; }
                Console.Error.Write("Unhandled exception: ");
                Console.Error.WriteLine(e.ToString());
                if (color) Console.ResetColor();
            }
            return 1;
        }
    }

    public static RootCommand Build()
    {
        var plugins = new Option<string[]>("--plugins")
        {
            Description = "Also load plugins from DIR (a plugin folder or a folder of them); repeatable. VIRTLAB_PLUGINS adds a path list.",
            HelpName = "DIR",
            Recursive = true,
            Arity = ArgumentArity.OneOrMore,
            AllowMultipleArgumentsPerToken = false,
        };
        var host = new Option<string?>("--host") { Hidden = true, Description = "Run as the REPL's evaluation host on this Unix socket." };
        var standby = new Option<bool>("--standby") { Hidden = true, Description = "With --host: a spare host started ahead." };

        var root = new RootCommand(
            "VirtLab: a C# shell for virtualization experiments. Without a command: the REPL.\n\n" + ExitCodes.Help)
        {
            plugins, host, standby,
        };
        root.SetAction(p =>
        {
            var dirs = p.GetValue(plugins) ?? [];
            return p.GetValue(host) is { } socket
                ? EvaluationHost.Run(socket, new HostOptions { PluginDirectories = dirs, Standby = p.GetValue(standby) })
                : ReplCommand.Run(new ReplOptions { PluginDirectories = dirs });
        });

        // ---- run ----
        var file = new Argument<string>("FILE") { Description = "The recipe (.csx)." };
        var recipeArgs = new Argument<string[]>("ARGS")
        {
            Description = "Recipe arguments, after --: e.g. -- --memory 8G --inflate 7G",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var json = new Option<string?>("--json") { Description = "Write the run record (JSON) to PATH.", HelpName = "PATH" };
        var test = new Option<bool>("--test") { Description = "Test mode: the recipe uses its small test sizes." };
        var noCache = new Option<bool>("--no-cache") { Description = "Compile even when a cached build of the recipe exists (and do not store it)." };
        var plotsDir = new Option<string?>("--plots") { Description = "Write charts to DIR: stage times, each per-iteration series in the results, every Plot(...) the recipe made; the run record lists them.", HelpName = "DIR" };
        var plotFormat = new Option<string>("--plot-format") { Description = "Chart file format for --plots.", DefaultValueFactory = _ => "png", HelpName = "png|svg" };
        plotFormat.AcceptOnlyFromAmong(RunPlots.Formats);
        var repeat = new Option<int>("--repeat") { Description = "Run the recipe N times, each in a fresh process; report median, min, max and spread of every stage and numeric result.", HelpName = "N" };
        var warmup = new Option<int>("--warmup") { Description = "With --repeat: first run K discarded warm-ups.", HelpName = "K" };
        var watch = new Option<bool>("--watch")
        {
            Description = "Run again whenever the recipe, a file it #loads or a plugin's dll changes (each run a fresh process); " +
                "one summary line per run: exit code, expectations, time. Ctrl+C ends the watch with the last run's exit code.",
        };
        var run = new Command("run", "Run a recipe headless.\n\n" + ExitCodes.Help) { file, recipeArgs, json, test, noCache, plotsDir, plotFormat, repeat, warmup, watch };
        run.SetAction(p =>
        {
            var options = new RunOptions(p.GetValue(file)!, p.GetValue(json), p.GetValue(plugins) ?? [], p.GetValue(test), p.GetValue(recipeArgs) ?? [],
                p.GetValue(noCache), p.GetValue(plotsDir), p.GetValue(plotFormat) ?? "png");
            if (p.GetValue(watch))
            {
                if (p.GetResult(repeat) is not null || p.GetResult(warmup) is not null) { Console.Error.WriteLine("virtlab run: --watch and --repeat do not go together"); return ExitCodes.Usage; }
                return WatchRunner.Execute(options);
            }
            if (p.GetResult(repeat) is not null || p.GetResult(warmup) is not null)
            {
                if (p.GetResult(repeat) is null) { Console.Error.WriteLine("virtlab run: --warmup needs --repeat N"); return ExitCodes.Usage; }
                return RepeatRunner.Execute(options, p.GetValue(repeat), p.GetValue(warmup));
            }
            return RunCommand.Execute(options);
        });
        root.Add(run);

        // ---- compare ----
        var records = new Argument<string[]>("RECORD") { Description = "Run records (virtlab run --json PATH); the first is the baseline.", Arity = ArgumentArity.OneOrMore };
        var force = new Option<bool>("--force") { Description = "Compare records of different recipes too." };
        var comparePlot = new Option<string?>("--plot") { Description = "Write the comparison as a chart (ratio to the first record) to FILE (.png or .svg).", HelpName = "FILE" };
        var compare = new Command("compare", "Compare run records side by side: environment differences, then each stage and numeric result with its ratio to the first, " +
            "marked * when beyond the spread of repeated runs and ? for single runs. Exit 0; 3 for a file that is not a run record or records of different recipes (unless --force).")
        {
            records, force, comparePlot,
        };
        compare.SetAction(p => CompareCommand.Execute(p.GetValue(records) ?? [], p.GetValue(force), p.GetValue(comparePlot)));
        root.Add(compare);

        // ---- test ----
        var paths = new Argument<string[]>("PATH")
        {
            Description = "Recipes or folders of recipes (default: scripts/). Files starting with _ are #load libraries and are not run.",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var timeout = new Option<int>("--timeout") { Description = "Seconds a recipe may run before it fails.", DefaultValueFactory = _ => 600, HelpName = "SECONDS" };
        var testCmd = new Command("test", "Run recipes in test mode (small sizes), one process each; prints PASS/FAIL/SKIP per recipe and 'N passed, N failed, N skipped'. Exit 1 when any failed.")
        {
            paths, timeout,
        };
        testCmd.SetAction(p => TestCommand.Execute(p.GetValue(paths) ?? [], p.GetValue(plugins) ?? [], p.GetValue(timeout)));
        root.Add(testCmd);

        // ---- plugin and recipe authoring (docs/PLUGINS.md) ----
        var packDir = new Argument<string>("DIR") { Description = "The local package folder (created) to write VirtLab.Sdk.<version>.nupkg to." };
        var packSdk = new Command("pack-sdk", "Write the VirtLab.Sdk package this shell provides to a local package folder, for building plugins offline.") { packDir };
        packSdk.SetAction(p => PluginAuthoring.PackSdk(p.GetValue(packDir)!));
        root.Add(packSdk);

        var pluginName = new Argument<string>("NAME") { Description = "The plugin's name: project, namespace and script global (letters and digits, e.g. Heatmap)." };
        var output = new Option<string?>("--output", "-o") { Description = "Folder to create (default: ./NAME); must not exist or be empty.", HelpName = "DIR" };
        var packages = new Option<string?>("--packages") { Description = "Local package folder for the SDK package (default: OUTPUT/packages); written, and named in nuget.config.", HelpName = "DIR" };
        var newPlugin = new Command("plugin", "Scaffold a plugin outside the repository: project on the VirtLab.Sdk package (local folder), " +
            "a sample experiment, an xunit project, a recipe.") { pluginName, output, packages };
        newPlugin.SetAction(p => PluginAuthoring.NewPlugin(p.GetValue(pluginName)!, p.GetValue(output), p.GetValue(packages)));
        root.Add(new Command("new", "Create something from a template.") { newPlugin });

        var initDir = new Argument<string>("DIR") { Description = "The recipes folder (default: the current one).", Arity = ArgumentArity.ZeroOrOne, DefaultValueFactory = _ => "." };
        var init = new Command("init", "Editor support for recipes in DIR: omnisharp.json and virtlab.rsp (the SDK, the plugins found and the " +
            "shell's imports), as `dotnet script init` does. Run again after adding a plugin.") { initDir };
        init.SetAction(p => PluginAuthoring.Init(p.GetValue(initDir)!, p.GetValue(plugins) ?? []));
        root.Add(init);

        // ---- the compile server (Cli/CompileServer) ----
        var serverStatus = new Command("status", "Whether this build's compile server runs: pid, compiles served, idle timeout, socket. Exit 1 when none runs.");
        serverStatus.SetAction(_ => CompileServer.Status(Console.Out));
        var serverStop = new Command("stop", "Stop this build's compile server (the next `virtlab run` that compiles starts a new one).");
        serverStop.SetAction(_ => CompileServer.Stop(Console.Out));
        var after = new Option<int?>("--after") { Description = "Warm up once this process has exited.", HelpName = "PID" };
        var serverRun = new Command("run", "Run the compile server in the foreground (what `virtlab run` starts detached).") { after };
        serverRun.Hidden = true;
        serverRun.SetAction(p => CompileServerProcess.Run(p.GetValue(after)));
        root.Add(new Command("server", "The compile server: a background process that keeps the C# compiler warm for `virtlab run` " +
            "(started by the first run that compiles; exits after VIRTLAB_SERVER_IDLE seconds idle, default 600; VIRTLAB_SERVER=0 turns it off, off under CI=true).")
        {
            serverStatus, serverStop, serverRun,
        });

        // ---- plugins / doctor ----
        var pluginsCmd = new Command("plugins", "List discovered plugins: name, version, SDK built against, global, path, load status or error.");
        pluginsCmd.SetAction(p => InfoCommands.Plugins(p.GetValue(plugins) ?? []));
        root.Add(pluginsCmd);
        var doctor = new Command("doctor", "Show what this machine offers: OS, kernel, CPU, memory, KVM and its capabilities, THP and hugetlb.");
        doctor.SetAction(p => InfoCommands.Doctor(p.GetValue(plugins) ?? []));
        root.Add(doctor);
        return root;
    }
}
