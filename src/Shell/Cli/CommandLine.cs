using System.CommandLine;
using System.CommandLine.Help;
using VirtLab.Shell.Repl;

namespace VirtLab.Shell.Cli;

/// <summary>
/// The <c>virtlab</c> command line (System.CommandLine 3): the REPL (no command), <c>run</c>, <c>test</c>,
/// <c>plugins</c>, <c>doctor</c>, and the hidden <c>--host SOCKET</c> that starts the REPL's evaluation host.
/// Parse errors exit 3 (usage), not System.CommandLine's default 1, so scripts can tell them from failures.
/// </summary>
public static class CommandLine
{
    public static int Run(string[] argv)
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

        var root = new RootCommand(
            "VirtLab: a C# shell for virtualization experiments. Without a command: the REPL.\n\n" + ExitCodes.Help)
        {
            plugins, host,
        };
        root.SetAction(p =>
        {
            var dirs = p.GetValue(plugins) ?? [];
            return p.GetValue(host) is { } socket
                ? EvaluationHost.Run(socket, new HostOptions { PluginDirectories = dirs })
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
        var run = new Command("run", "Run a recipe headless.\n\n" + ExitCodes.Help) { file, recipeArgs, json, test, noCache };
        run.SetAction(p => RunCommand.Execute(new RunOptions(
            p.GetValue(file)!, p.GetValue(json), p.GetValue(plugins) ?? [], p.GetValue(test), p.GetValue(recipeArgs) ?? [], p.GetValue(noCache))));
        root.Add(run);

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
