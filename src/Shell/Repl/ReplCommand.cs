// Entry points the CLI (src/Shell/Cli) calls — keep these two signatures stable:
//
//   virtlab [--plugins DIR]…                  → return VirtLab.Shell.Repl.ReplCommand.Run(new ReplOptions { PluginDirectories = dirs });
//   virtlab --host SOCKET [--plugins DIR]…    → return VirtLab.Shell.Repl.EvaluationHost.Run(socket, new HostOptions { PluginDirectories = dirs });
//
// `--host` is a hidden option on the root command (not shown in help): the REPL front end starts
// `<this program> --host <unix socket path> [--plugins DIR]…` itself (HostClient.StartAsync) with the
// same --plugins it was given; the CLI only has to route it. Both return the process exit code.

namespace VirtLab.Shell.Repl;

public sealed record ReplOptions
{
    /// <summary>Extra plugin folders (--plugins); VIRTLAB_PLUGINS and the built-in plugins/ folder are added by the host.</summary>
    public IReadOnlyList<string> PluginDirectories { get; init; } = [];

    /// <summary>History file; null means $HOME/.virtlab/history.</summary>
    public string? HistoryPath { get; init; }
}

public sealed record HostOptions
{
    public IReadOnlyList<string> PluginDirectories { get; init; } = [];

    /// <summary>Started ahead as a spare (--standby): it warms up until it is taken. Else the front end puts it to use at once.</summary>
    public bool Standby { get; init; }
}

public static class ReplCommand
{
    /// <summary>The interactive REPL (the line editor on a terminal, plain line mode on piped stdin). Returns the exit code.</summary>
    public static int Run(ReplOptions options)
    {
        // The evaluation host's start (its runtime, plugins, Roslyn's first compile) is the first result's critical path:
        // it begins before anything else here, the terminal and line editor set up meanwhile.
        var host = HostClient.StartAsync(options.PluginDirectories);
        using var repl = new Repl(options, host);
        return repl.RunAsync().GetAwaiter().GetResult();
    }
}
