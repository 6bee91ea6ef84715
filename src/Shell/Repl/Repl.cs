using System.ComponentModel;
using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
using Spectre.Console;

using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Repl;

/// <summary>
/// The REPL front end: terminal, line editing, history and the list of successful submissions. Everything
/// that evaluates (Roslyn, plugins, VMs) lives in an evaluation host process. A hot swap, a Ctrl+C the code
/// does not honour and a host crash all end the same way (<see cref="Restart"/>): a fresh host — the
/// pre-warmed standby when there is one — with the successful submissions replayed, and one line saying so.
/// </summary>
internal sealed partial class Repl : IDisposable
{
    private static readonly TimeSpan CancelGrace = TimeSpan.FromSeconds(1);
    private const int MaxIdleRestarts = 3;

    private readonly ReplOptions _options;
    private readonly History _history;
    private readonly CSharpHighlighter _highlighter = new();
    private readonly ILineSource _lines;
    private readonly PluginWatcher _watcher;
    private readonly List<string> _submissions = [];       // successful, in order: what replay and #save use
    private readonly HashSet<string> _declared = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _hostLock = new(1, 1);  // one user of the host at a time: evaluation, swap, restart
    private readonly bool _color;                           // ANSI colour on the terminal (not with NO_COLOR)
    private readonly CancellationTokenSource _leaving = new(); // ends a standby still starting when the REPL exits

    private HostClient? _host;
    private Task<HostClient>? _standby;
    private List<PluginEntry> _plugins = [];
    private volatile bool _swapPending;
    private int _idleRestarts; // restarts after an idle host died, since the last evaluation (a host that dies at once stops them)

    // Ctrl+C routing: set while evaluating / while at the prompt.
    private volatile TaskCompletionSource? _interrupt;
    private volatile CancellationTokenSource? _promptCancel;

    private readonly Task<HostClient>? _firstHost; // started before this front end's own set-up (ReplCommand)

    public Repl(ReplOptions options, Task<HostClient>? firstHost = null)
    {
        _options = options;
        _firstHost = firstHost;
        _history = new History(options.HistoryPath ?? History.DefaultPath());
        var interactive = TerminalLineSource.IsSupported();
        _color = interactive && ColorWanted();
        // VIRTLAB_COLOR=never: the banner, tables and notices the front end prints go without colour too.
        if (interactive && !_color) AnsiConsole.Console.Profile.Capabilities.ColorSystem = ColorSystem.NoColors;
        _lines = interactive
            ? new TerminalLineSource(_highlighter, new HostAssist(Ask), _history.Entries, _color)
            : new PipedLineSource();
        _watcher = new PluginWatcher(() => new PluginSearchPaths(options.PluginDirectories).Roots(), dirs =>
        {
            _swapPending = true;
            _ = Task.Run(() => HotSwap(dirs));
        });
    }

    public async Task<int> RunAsync()
    {
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSigint);
        VirtLab.Shell.Cli.StartupTrace.Mark("repl: constructed");
        try
        {
            // The prompt comes up at once; the host starts meanwhile, holding the lock so the first
            // evaluation waits for it (a completion gives up after 200 ms).
            await _hostLock.WaitAsync();
            _ = Task.Run(async () =>
            {
                try
                {
                    var host = await (_firstHost ?? HostClient.StartAsync(_options.PluginDirectories));
                    VirtLab.Shell.Cli.StartupTrace.Mark("repl: host connected");
                    _host = host;
                    // Not awaited: plugins-info is on the wire first, so the host answers it before the first submission,
                    // which need not wait here for the answer (nor for the plugin folders' watch it starts).
                    _firstActivation = ActivateFirst(host);
                }
                catch (Exception e) when (e is HostDiedException or IOException or SocketException or Win32Exception)
                {
                    Error($"cannot start the evaluation host: {e.Message}"); // the first evaluation tries again
                }
                finally { _hostLock.Release(); }
            });
            if (_lines.IsInteractive)
                AnsiConsole.MarkupLine("[grey]VirtLab REPL · #help for commands · Ctrl+D to leave[/]");

            var emptyInterrupts = 0;
            while (true)
            {
                var (status, text) = await ReadSubmission();
                if (status == LineStatus.EndOfInput) break;
                if (status == LineStatus.Interrupted)
                {
                    // Ctrl+C at the prompt clears the line; twice in a row on an empty line leaves.
                    if (text.Length > 0) { emptyInterrupts = 0; continue; }
                    if (++emptyInterrupts >= 2) break;
                    if (_lines.IsInteractive) AnsiConsole.MarkupLine("[grey](Ctrl+C again, Ctrl+D or #exit to leave)[/]");
                    continue;
                }
                emptyInterrupts = 0;
                if (string.IsNullOrWhiteSpace(text)) continue;
                _history.Append(text);
                _lines.AddHistory(text);
                if (MetaCommands.IsMeta(text))
                {
                    if (!await Meta(text)) break;
                    continue;
                }
                if (MetaCommands.UnknownMeta(text) is { } unknown)
                {
                    _anyFailed = true;
                    Error($"unknown meta-command #{unknown}; the meta-commands are {string.Join(", ", MetaCommands.All.Select(c => "#" + c.Name))} (#help explains them)");
                    continue;
                }
                await Evaluate(text);
            }
            // Piped, the exit code tells a script whether every submission went through.
            return _anyFailed && !_lines.IsInteractive ? 1 : 0;
        }
        finally
        {
            _watcher.Dispose();
            _leaving.Cancel();
            await _hostLock.WaitAsync(); // no swap or restart from here on
            var (host, standby) = (_host, _standby);
            (_host, _standby) = (null, null);
            var shutdowns = new List<Task>();
            if (host is not null) shutdowns.Add(host.ShutdownAsync());
            if (standby is { IsCompletedSuccessfully: true }) shutdowns.Add(standby.Result.ShutdownAsync());
            else if (standby is not null) shutdowns.Add(standby.ContinueWith(_ => { }, TaskScheduler.Default)); // cancelled: killed
            await Task.WhenAll(shutdowns);
        }
    }

    // ---- input ---------------------------------------------------------------------------------------

    /// <summary>Reads lines until they form a complete submission (or a meta-command). The Interrupted
    /// status carries the text that was being entered (empty when Ctrl+C hit an empty prompt).</summary>
    private async Task<(LineStatus, string)> ReadSubmission()
    {
        var sb = new StringBuilder();
        while (true)
        {
            var cts = new CancellationTokenSource();
            _promptCancel = cts;
            LineStatus status;
            string line;
            try { (status, line) = await _lines.ReadLineAsync(sb.Length > 0, sb.ToString(), cts.Token); }
            finally { _promptCancel = null; cts.Dispose(); }

            if (status == LineStatus.Interrupted) return (status, sb.ToString() + line);
            if (_lines.ReadsWholeSubmissions) return (status, status == LineStatus.Line ? line : "");
            if (status == LineStatus.EndOfInput)
                return sb.Length > 0 ? (LineStatus.Line, sb.ToString().TrimEnd('\n')) : (status, "");

            if (sb.Length == 0 && MetaCommands.IsMeta(line)) return (LineStatus.Line, line);
            sb.Append(line).Append('\n');
            var text = sb.ToString();
            if (string.IsNullOrWhiteSpace(text) || MetaCommands.IsCompleteSubmission(text)) return (LineStatus.Line, text.TrimEnd('\n'));
            // Two blank lines end a submission that would never complete (an unterminated string): its errors show.
            if (text.EndsWith("\n\n\n", StringComparison.Ordinal)) return (LineStatus.Line, text.TrimEnd('\n'));
        }
    }

    private void OnSigint(PosixSignalContext context)
    {
        context.Cancel = true; // never die of Ctrl+C: route it
        if (_interrupt is { } evaluation) evaluation.TrySetResult();
        else _promptCancel?.Cancel();
    }

    // ---- evaluation ----------------------------------------------------------------------------------

    /// <param name="origin">The file a <c>#load</c> read the code from: its compile errors are positioned in it.</param>
    private async Task Evaluate(string code, string? origin = null)
    {
        await _hostLock.WaitAsync();
        try
        {
            _idleRestarts = 0;
            if (await EnsureHost() is not { } host) return;
            var interrupt = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            _interrupt = interrupt;
            Task<Reply> submit;
            try
            {
                VirtLab.Shell.Cli.StartupTrace.Mark("repl: submit");
                submit = host.SendAsync(new Request { Kind = RequestKind.Submit, Code = code, Width = _lines.IsInteractive ? AnsiConsole.Console.Profile.Width : 0 });
                if (await Task.WhenAny(submit, interrupt.Task) == interrupt.Task)
                {
                    host.SendCancel(); // cooperative first: RecipeGlobals.Cancellation
                    if (await Task.WhenAny(submit, Task.Delay(CancelGrace)) != submit)
                    {
                        _interrupt = null;
                        _anyFailed = true;
                        await Restart($"evaluation did not stop within {CancelGrace.TotalSeconds:0} s of Ctrl+C: host killed");
                        return;
                    }
                }
            }
            finally { _interrupt = null; }

            Reply reply;
            try { reply = await submit; }
            catch (HostDiedException e)
            {
                _anyFailed = true;
                await Restart($"evaluation host died ({e.How}) during the evaluation");
                return;
            }
            VirtLab.Shell.Cli.StartupTrace.Mark("repl: reply");
            Report(reply, origin);
            if (!ReferenceEquals(_typesFrom, host)) FetchTypeNames(_typesFrom = host);
            if (reply.Status == SubmitStatus.Ok)
            {
                _submissions.Add(code);
                foreach (var name in MetaCommands.DeclaredNames(code)) _declared.Add(name);
                _highlighter.SetLocals(_declared);
            }
        }
        finally
        {
            EnsureStandby();
            _hostLock.Release();
        }
    }

    private HostClient? _typesFrom;

    /// <summary>The type names to highlight, asked once per host after its first evaluation (walking the imported
    /// namespaces reads much metadata: not before the first result). Not awaited: the answer comes while the user types.</summary>
    private void FetchTypeNames(HostClient host) => _ = Task.Run(async () =>
    {
        try { _highlighter.SetTypes((await host.SendAsync(new Request { Kind = RequestKind.TypeNames })).Types ?? []); }
        catch (Exception e) when (e is HostDiedException or IOException or ObjectDisposedException or OperationCanceledException) { }
    });

    private void Report(Reply reply, string? origin = null)
    {
        if (reply.Status != SubmitStatus.Ok) _anyFailed = true;
        switch (reply.Status)
        {
            case SubmitStatus.Ok:
                break;
            case SubmitStatus.CompileError:
                foreach (var d in reply.Diagnostics ?? [])
                {
                    var text = d.ToString() ?? "";
                    Error(origin is not null && text.StartsWith('(') ? origin + text : text);
                }
                if (reply.Diagnostics is not { Count: > 0 }) Error(reply.Error ?? "compilation failed");
                break;
            case SubmitStatus.Cancelled:
                Error("cancelled");
                break;
            default:
                Error(reply.Error ?? "evaluation failed");
                break;
        }
    }

    /// <summary>Colour on a terminal unless NO_COLOR or VIRTLAB_COLOR=never (Spectre's own detection first).</summary>
    private static bool ColorWanted() =>
        AnsiConsole.Console.Profile.Capabilities.ColorSystem != ColorSystem.NoColors
        && Environment.GetEnvironmentVariable("NO_COLOR") is not { Length: > 0 }
        && Environment.GetEnvironmentVariable("VIRTLAB_COLOR") != "never";

    private Task<Reply>? _asking; // a question the host has not answered in time: no second one is queued behind it
    private volatile Task? _firstActivation; // until the first host has answered plugins-info, it is still starting

    /// <summary>The editor's completion, signature help and quick info; null when the host cannot answer now (starting,
    /// swapping, or still on an earlier question: the editor says "warming up" and asks again).</summary>
    private Reply? Ask(Request request)
    {
        // Never block the editor for long: no answer while the first host starts, nor while a swap or restart holds the host.
        if (_firstActivation is { IsCompleted: false }) return null;
        if (!_hostLock.Wait(TimeSpan.FromMilliseconds(200))) return null;
        try
        {
            if (_host is not { IsAlive: true } host) return null;
            if (_asking is { IsCompleted: false } earlier && !earlier.Wait(TimeSpan.FromMilliseconds(300))) return null;
            var answer = host.SendAsync(request);
            if (!answer.Wait(TimeSpan.FromSeconds(2))) { _asking = answer; return null; }
            _asking = null;
            return answer.Result;
        }
        catch (AggregateException e) when (e.InnerException is HostDiedException or OperationCanceledException or ObjectDisposedException or IOException) { return null; }
        catch (Exception e) when (e is HostDiedException or OperationCanceledException or ObjectDisposedException or IOException) { return null; }
        finally { _hostLock.Release(); }
    }

    // ---- hosts: standby, restart, replay, hot swap ------------------------------------------------------

    /// <summary>The first host's <see cref="Activate"/>, beside the first evaluation (the host answers in order).</summary>
    private async Task ActivateFirst(HostClient host)
    {
        try
        {
            await Activate(host);
            VirtLab.Shell.Cli.StartupTrace.Mark("repl: host active");
            WatchHost(host);
        }
        catch (Exception e) when (e is HostDiedException or IOException or SocketException or ObjectDisposedException or OperationCanceledException)
        {
            if (ReferenceEquals(_host, host)) Error($"cannot start the evaluation host: {e.Message}"); // the first evaluation tries again
        }
    }

    /// <summary>First request to a host: it loads its plugins (after having warmed up Roslyn) and tells which.</summary>
    private async Task Activate(HostClient host)
    {
        var info = await host.SendAsync(new Request { Kind = RequestKind.PluginsInfo });
        _plugins = info.Plugins ?? [];
        _highlighter.SetGlobals(info.Globals ?? []);
        foreach (var p in _plugins.Where(p => p.Status != "Loaded" && p.Error is not null))
            Error($"plugin {p.Name}: {p.Error}");
        _watcher.Watch();
    }

    /// <summary>The live host, after a restart if need be; null if none could be started (the error is shown).</summary>
    private async Task<HostClient?> EnsureHost()
    {
        if (_host is { IsAlive: true } h) return h;
        var how = _host is null ? "not running" : await _host.ExitDescriptionAsync();
        await Restart($"evaluation host died ({how})");
        return _host;
    }

    /// <summary>Keeps one warmed-up spare host ready (started after the first evaluation, so it does not slow the
    /// first result). Caller holds <see cref="_hostLock"/>.</summary>
    private void EnsureStandby()
    {
        var s = _standby;
        if (s is not null && (!s.IsCompleted || s.IsCompletedSuccessfully && s.Result.IsAlive)) return;
        if (s is { IsCompletedSuccessfully: true }) s.Result.Dispose();
        _standby = HostClient.StartAsync(_options.PluginDirectories, ct: _leaving.Token, standby: true);
    }

    private async Task<HostClient> TakeStandby()
    {
        var standby = _standby;
        _standby = null;
        if (standby is not null)
        {
            try
            {
                var h = await standby;
                if (h.IsAlive) return h;
                h.Dispose();
            }
            catch (Exception e) when (e is HostDiedException or IOException or SocketException or Win32Exception) { } // start another
        }
        return await HostClient.StartAsync(_options.PluginDirectories);
    }

    /// <summary>
    /// Replaces the host (caller holds <see cref="_hostLock"/>): kill the old one, take the standby, load plugins,
    /// replay the successful submissions quietly (values not shown, script output discarded), print one line —
    /// <paramref name="reason"/>, or what <paramref name="describe"/> makes of the old and new plugin lists.
    /// Replay compiles every submission again (Roslyn, ~10–40 ms each once warm), also when the plugins did not
    /// change. Reusing the emitted images instead would need the session to keep its assembly names across hosts and
    /// to run a submission from an image (src/Shell/Scripting/InteractiveSession); not done.
    /// </summary>
    private async Task Restart(string reason, Func<List<PluginEntry>, List<PluginEntry>, string>? describe = null, bool replay = true)
    {
        var sw = Stopwatch.StartNew();
        var old = _host;
        _host = null;
        old?.Dispose(); // kills it: no per-swap state stays behind
        var oldPlugins = _plugins;

        HostClient? host = null;
        try
        {
            host = await TakeStandby();
            await Activate(host);
        }
        catch (Exception e) when (e is HostDiedException or IOException or SocketException or Win32Exception)
        {
            host?.Dispose();
            Error($"{reason}; cannot start a fresh host: {e.Message}");
            return;
        }
        _host = host;
        WatchHost(host);

        var outcome = replay ? await Replay(host) : null;
        if (!replay) _submissions.Clear();

        var what = describe?.Invoke(oldPlugins, _plugins) ?? reason;
        var line = outcome is { } o
            ? $"{what}; replayed {o.Replayed} submission{(o.Replayed == 1 ? "" : "s")} in {sw.ElapsedMilliseconds} ms" +
              (o.Replayed > 0 ? " (re-run: values recomputed, not kept)" : "")
            : $"{what} ({sw.ElapsedMilliseconds} ms)";
        if (outcome is { Dropped.Count: > 0 } d)
            line += $"; {(d.Interrupted ? "Ctrl+C stopped the replay, " : "")}{d.Dropped.Count} dropped: {string.Join("; ", d.Dropped)}";
        _lines.Notice(_color ? $"\u001b[36m↻ {line}\u001b[0m" : "↻ " + line);
        // The old host's buffers are garbage now and the REPL is about to idle: give the memory back, so the
        // front end's footprint stays what it really holds however many swaps happen.
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        EnsureStandby();
    }

    private static string Shorten(string code)
    {
        var one = code.ReplaceLineEndings(" ").Trim();
        return one.Length <= 40 ? one : one[..37] + "...";
    }

    /// <summary>A host that dies while the REPL is idle (a plugin's background thread crashed) is replaced at once.</summary>
    private void WatchHost(HostClient host)
    {
        _ = host.Closed.ContinueWith(async _ =>
        {
            await _hostLock.WaitAsync();
            try
            {
                if (!ReferenceEquals(_host, host)) return; // replaced on purpose, or the REPL is leaving
                // A rebuild can pull the old plugin file from under the host (SIGBUS); the swap on its way replaces it.
                if (_swapPending || _watcher.HasPending) return;
                var how = await host.ExitDescriptionAsync();
                if (++_idleRestarts > MaxIdleRestarts)
                {
                    // Something the replay starts kills each new host: stop here; the next evaluation starts one.
                    _host = null;
                    host.Dispose();
                    Error($"evaluation host died ({how}) again right after a restart; not restarting until the next evaluation");
                    return;
                }
                await Restart($"evaluation host died ({how})");
            }
            finally { _hostLock.Release(); }
        }, TaskScheduler.Default);
    }

    private async Task HotSwap(IReadOnlyCollection<string> changedDirs)
    {
        await _hostLock.WaitAsync();
        try
        {
            _swapPending = false;
            await Restart("hot swap", (before, after) =>
            {
                var changed = after.Where(p => changedDirs.Contains(Path.GetDirectoryName(p.Path)!)).ToList();
                if (changed.Count == 0) changed = after;
                return "reloaded " + string.Join(", ", changed.Select(p => SwapNotice.Describe(p, before)));
            });
        }
        catch (Exception e) { Error($"hot swap failed: {e.Message}"); }
        finally { _hostLock.Release(); }
    }

    // ---- meta-commands ------------------------------------------------------------------------------

    /// <summary>Runs a meta-command; false means leave.</summary>
    private async Task<bool> Meta(string line)
    {
        var (name, arg) = MetaCommands.Split(line);
        switch (name)
        {
            case "exit":
                return false;
            case "help":
                Console.Out.WriteLine(MetaCommands.HelpText());
                break;
            case "plugins":
                await ShowPlugins();
                break;
            case "reload":
                await _hostLock.WaitAsync();
                try { await Restart("reloaded", (b, a) => "reloaded " + (a.Count == 0 ? "(no plugins)" : string.Join(", ", a.Select(p => SwapNotice.Describe(p, b))))); }
                finally { _hostLock.Release(); }
                break;
            case "reset":
                await _hostLock.WaitAsync();
                try
                {
                    _declared.Clear();
                    _highlighter.SetLocals([]);
                    await Restart("session reset: fresh host, no submissions", replay: false);
                }
                finally { _hostLock.Release(); }
                break;
            case "load":
                if (arg.Length == 0) { Error("usage: #load FILE"); break; }
                string code;
                try { code = await File.ReadAllTextAsync(arg); }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException) { _anyFailed = true; Error($"#load: {e.Message}"); break; }
                await Evaluate(code, arg);
                break;
            case "save":
                if (arg.Length == 0) { Error("usage: #save FILE"); break; }
                try
                {
                    await File.WriteAllTextAsync(arg, MetaCommands.Recipe(_submissions));
                    Console.Out.WriteLine($"saved {_submissions.Count} submission{(_submissions.Count == 1 ? "" : "s")} to {arg}");
                }
                catch (Exception e) when (e is IOException or UnauthorizedAccessException) { Error($"#save: {e.Message}"); }
                break;
        }
        return true;
    }

    private async Task ShowPlugins()
    {
        List<PluginEntry> plugins;
        await _hostLock.WaitAsync();
        try
        {
            if (await EnsureHost() is not { } host) return;
            plugins = (await host.SendAsync(new Request { Kind = RequestKind.PluginsInfo })).Plugins ?? [];
        }
        catch (HostDiedException e) { Error(e.Message); return; }
        finally { _hostLock.Release(); }
        if (plugins.Count == 0) { Console.Out.WriteLine("no plugins"); return; }
        if (!_lines.IsInteractive)
        {
            foreach (var p in plugins)
                Console.Out.WriteLine($"{p.Name} {p.Version} {p.Global} {p.Status} {p.Path}{(p.Error is null ? "" : " — " + p.Error)}");
            return;
        }
        var table = new Table().AddColumns("Plugin", "Version", "SDK", "Global", "Status", "Path");
        foreach (var p in plugins)
            table.AddRow(Markup.Escape(p.Name), Markup.Escape(p.Version), Markup.Escape(p.Sdk), Markup.Escape(p.Global),
                p.Status == "Loaded" ? "[green]loaded[/]" : $"[red]{Markup.Escape(p.Error ?? p.Status)}[/]", Markup.Escape(p.Path));
        AnsiConsole.Write(table);
    }

    /// <summary>On the terminal through <see cref="ILineSource.Notice"/>: a swap or restart may report while the prompt is up.</summary>
    private void Error(string message)
    {
        if (_lines.IsInteractive) _lines.Notice(_color ? $"\u001b[31m{message}\u001b[0m" : message);
        else { Console.Error.WriteLine(message); Console.Error.Flush(); }
    }

    public void Dispose()
    {
        _lines.Dispose();
        _hostLock.Dispose();
        _leaving.Dispose();
    }
}

/// <summary>What a reload notice says of one plugin: old → new version, or, for a rebuild of the same version, old → new
/// build; a plugin that was not there before is new.</summary>
internal static class SwapNotice
{
    public static string Describe(PluginEntry p, IReadOnlyList<PluginEntry> before)
    {
        var was = before.FirstOrDefault(b => b.Path == p.Path) ?? before.FirstOrDefault(b => b.Name == p.Name);
        var status = p.Status == "Loaded" ? "" : $" (failed: {p.Error})";
        if (was is null) return $"{p.Name} {p.Version} (new plugin){status}";
        if (was.Version != p.Version) return $"{p.Name} {was.Version} → {p.Version}{status}";
        if (was.Build != p.Build) return $"{p.Name} {p.Version} (build {was.Build} → {p.Build}){status}";
        return $"{p.Name} {p.Version} (unchanged){status}";
    }
}
