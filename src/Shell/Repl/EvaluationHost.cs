using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Spectre.Console;
using VirtLab.Sdk;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Rendering;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Repl;

/// <summary>
/// The evaluation host: a child process of the REPL front end (the Jupyter-kernel model) that holds Roslyn,
/// the plugins and whatever the session created (VMs). It connects to the front end's socket and loads its
/// plugins on the first request (plugins-info, sent when the front end puts it to use). A standby host —
/// started ahead and asked nothing for a while — warms Roslyn up meanwhile with a plugin-free throwaway
/// session, so it is fast when taken and still loads the newest plugin builds. Script output goes to the
/// inherited stdout/stderr. It exits when the front end goes away (end of the socket).
/// </summary>
public static class EvaluationHost
{
    public static int Run(string socketPath, HostOptions options)
    {
        // The terminal sends Ctrl+C to the whole foreground process group; the front end decides what it means.
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => c.Cancel = true);

        // Put to use at once: work off the session's critical path (and off Roslyn's code, which that path JITs) goes to
        // the second core meanwhile.
        if (!options.Standby) SideWarmUp.Start(references: !VirtLab.Shell.Cli.CompileServer.IsListening);
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try { socket.Connect(new UnixDomainSocketEndPoint(socketPath)); }
        catch (SocketException e)
        {
            Console.Error.WriteLine($"virtlab --host: cannot connect to {socketPath}: {e.Message}");
            return 3;
        }
        // Bind the shell's consoles to the real stdout/stderr now: a quiet replay swaps Console.Out for a null
        // writer, and they must not pick that one up if first used then.
        // The live progress bar wraps Console.Out/Error, so it goes first; the evaluation thread inherits its listener.
        using var progress = TerminalProgress.InstallIfTerminal();
        _ = Consoles.Out;
        _ = Consoles.Error;
        VirtLab.Shell.Cli.StartupTrace.Mark("host: connected, consoles bound");
        using var stream = new NetworkStream(socket, ownsSocket: true);
        var host = new Host(stream, options);
        return host.Run();
    }

    private sealed class Host(NetworkStream stream, HostOptions options)
    {
        // VIRTLAB_HOST_TRACE=1: one stderr line per request with its duration (for measuring, not for users).
        private static readonly bool Trace = Environment.GetEnvironmentVariable("VIRTLAB_HOST_TRACE") == "1";
        private readonly SemaphoreSlim _writeLock = new(1, 1);
        private readonly BlockingCollection<Request> _work = new();
        private volatile CancellationTokenSource? _running;
        private InteractiveSession? _session;

        public int Run()
        {
            // Evaluation runs on one thread with a generous stack (deeply recursive scripts); the socket reader
            // stays free to take "cancel" while it runs.
            var worker = new Thread(WorkLoop, 64 << 20) { Name = "virtlab-eval", IsBackground = true };
            worker.Start();
            ReadLoop().GetAwaiter().GetResult();
            return 0;
        }

        private async Task ReadLoop()
        {
            while (true)
            {
                Request? request;
                try { request = await Framing.ReadAsync<Request>(stream); }
                catch (Exception e) when (e is InvalidDataException or System.Text.Json.JsonException) { request = null; }
                if (request is null) Exit(0); // the front end is gone: nothing left to serve

                switch (request!.Kind)
                {
                    case RequestKind.Cancel:
                        Cancel();
                        await Answer(request);
                        break;
                    case RequestKind.Shutdown:
                        await Answer(request);
                        Exit(0);
                        break;
                    default:
                        _work.Add(request);
                        break;
                }
            }
        }

        private async Task Answer(Request request)
        {
            try { await Send(new Reply { Id = request.Id }); }
            catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { Exit(0); } // the front end is gone
        }

        /// <summary>On the reader: nothing here may end the reader (and the host with it).</summary>
        private void Cancel()
        {
            try { _running?.Cancel(); }
            catch (ObjectDisposedException) { } // the submission ended (and disposed its source) just now
            catch (AggregateException e) // a callback the script registered on Cancellation threw
            {
                Console.Error.WriteLine($"a Cancellation callback threw: {e.InnerException?.Message ?? e.Message}");
            }
        }

        private static void Exit(int code)
        {
            Console.Out.Flush();
            Console.Error.Flush();
            Environment.Exit(code);
        }

        private Task Send(Reply reply) => Framing.WriteAsync(stream, reply, _writeLock);

        private void WorkLoop()
        {
            // A host the front end needs now asks for its plugins at once; a standby hears nothing until it is
            // taken, so it warms up in the meantime.
            var warmed = false;
            var compiled = false;
            // With a compile server up, a host put to use at once (not --standby) lets the server compile its first
            // submissions, so it waits for its first request instead of starting a local compile (on a loaded machine
            // that request can take longer than 100 ms to come).
            if (!options.Standby)
            {
                // Put to use at once: its first request (plugins-info) needs the session, so build it now rather than
                // after the front end's request has come (or after a throwaway warm-up, when that request is late).
                try { Session(); }
                catch (Exception) { } // the first request tries again and answers with the error
            }
            else if (_work.TryTake(out var first, TimeSpan.FromMilliseconds(100))) _work.Add(first);
            else { WarmUp(); warmed = true; }
            while (true)
            {
                // Put to use at once (the REPL's first host): warm up once the plugins are in and nothing came for a
                // second (a user still typing; a replay sends its submissions at once), so the first submission, the
                // first Tab and the first Vm.Create find Roslyn and the SDK warm. On this thread, never beside a compile:
                // a warm-up compiling beside the session's first submission made Roslyn see the SDK twice (CS1503).
                if (!_work.TryTake(out var request, warmed || _session is null ? Timeout.InfiniteTimeSpan : TimeSpan.FromSeconds(1)))
                {
                    warmed = true;
                    WarmUp(compile: !compiled);
                    WarmSession();
                    continue;
                }
                compiled = ScriptCompiler.EmittedLocally; // a submission the compile server emitted left this Roslyn cold
                Reply reply;
                var sw = Stopwatch.StartNew();
                try
                {
                    reply = request.Kind switch
                    {
                        RequestKind.Submit => Submit(request),
                        RequestKind.Complete => Complete(request),
                        RequestKind.Signature => Signature(request),
                        RequestKind.QuickInfo => new Reply { Info = Session().QuickInfo(request.Code ?? "", request.Position) },
                        RequestKind.TypeNames => new Reply { Types = Session().TypeNamesInScope().ToList() },
                        RequestKind.PluginsInfo => PluginsInfo(),
                        _ => new Reply { Ok = false, Error = $"unknown request '{request.Kind}'" },
                    };
                }
                catch (Exception e) { reply = new Reply { Ok = false, Status = SubmitStatus.RuntimeError, Error = $"host error: {e}" }; }
                reply.Id = request.Id;
                reply.Milliseconds = sw.Elapsed.TotalMilliseconds;
                if (Trace) Console.Error.WriteLine($"[host {Environment.ProcessId}] {request.Kind} {(request.Quiet ? "(quiet) " : "")}{reply.Milliseconds:0} ms{(request.Kind is RequestKind.Submit or RequestKind.PluginsInfo ? ", " + _session?.LastCompile : "")}");
                Console.Out.Flush(); // the script's output reaches the terminal before the front end's next prompt
                Console.Error.Flush();
                try { Send(reply).GetAwaiter().GetResult(); }
                catch (Exception e) when (e is IOException or SocketException or ObjectDisposedException) { return; } // the reader sees the end too and exits
                // The plugin preamble, when the first submissions named no global, joins now: while the user reads.
                if (request.Kind == RequestKind.Submit && _work.Count == 0)
                {
                    try { _session?.EnsurePreamble(); }
                    catch (Exception e) { Console.Error.WriteLine($"virtlab host: plugin preamble failed: {e.Message}"); }
                }
            }
        }

        /// <summary>JITs Roslyn's compile/emit/run and completion paths with a plugin-free throwaway session.</summary>
        /// <param name="compile">False once a submission compiled: Roslyn is warm, only the SDK is left.</param>
        private static void WarmUp(bool compile = true)
        {
            try
            {
                if (compile)
                {
                    var warm = new InteractiveSession(PluginSet.Empty, new RecipeContext());
                    warm.Submit("var __warm = 1 + 1; __warm");
                    warm.WarmUp();
                }
                // The SDK's hot paths too, as for `virtlab run` (Cli/ProcessPreparer); the session's first Vm.Create waits for it.
                if (VirtLab.Shell.Cli.ProcessPreparer.Enabled) VirtLab.Sdk.Machine.WarmUp.Start();
            }
            catch (Exception e) { Console.Error.WriteLine($"virtlab host: warm-up failed: {e.Message}"); }
        }

        /// <summary>Binds a throwaway completion in the real session: the first Tab is warm.</summary>
        private void WarmSession()
        {
            try { _session?.WarmUp(); }
            catch (Exception e) { Console.Error.WriteLine($"virtlab host: warm-up failed: {e.Message}"); }
        }

        private InteractiveSession Session()
        {
            if (_session is not null) return _session;
            VirtLab.Shell.Cli.StartupTrace.Mark("host: session wanted");
            var plugins = PluginSet.Load(new PluginSearchPaths(options.PluginDirectories), ScriptPreamble.ReservedNames(typeof(RecipeGlobals)));
            VirtLab.Shell.Cli.StartupTrace.Mark("host: plugins loaded");
            _session = new InteractiveSession(plugins, new RecipeContext(), useCompileServer: true);
            if (VirtLab.Shell.Cli.ProcessPreparer.Enabled)
                foreach (var p in plugins.Loaded.Where(p => p.Plugin is not null))
                    VirtLab.Sdk.Machine.WarmUp.Then(() =>
                    {
                        try { p.Plugin!.WarmUp(); }
                        catch (Exception e) { Console.Error.WriteLine($"virtlab: warning: warm-up of plugin {p.Name}: {RecipeContext.Unwrap(e)!.Message}"); }
                    });
            _session.Globals.Context.Plots.Added = ReplPlots.Write;
            VirtLab.Shell.Cli.StartupTrace.Mark("host: session ready");
            return _session;
        }

        private Reply Submit(Request request)
        {
            var session = Session();
            using var cts = new CancellationTokenSource();
            _running = cts;
            session.Globals.Context.Cancellation = cts.Token;
            var (stdout, stderr, console) = (Console.Out, Console.Error, AnsiConsole.Console);
            if (request.Width > 0)
                foreach (var c in new[] { Consoles.Out, Consoles.Error, AnsiConsole.Console })
                    if (c.Profile.Out.IsTerminal) c.Profile.Width = request.Width;
            // A quiet replay shows no progress and draws no plots.
            using var silent = request.Quiet ? VirtLab.Sdk.Measure.Progress.Listen(SilentProgress.Instance) : null;
            // Show(x) as the submission's value would print x twice: the echo skips a value Show has just printed.
            var shown = new List<object>();
            var show = session.Globals.Context.Show;
            session.Globals.Context.Show = v => { if (v is not null) shown.Add(v); show(v); };
            var plotsAdded = session.Globals.Context.Plots.Added;
            if (request.Quiet) session.Globals.Context.Plots.Added = null;
            if (request.Quiet)
            {
                Console.SetOut(TextWriter.Null);
                Console.SetError(TextWriter.Null);
                AnsiConsole.Console = Consoles.Create(TextWriter.Null, isTerminal: false);
            }
            try
            {
                SubmissionResult result;
                using (RunCancellation.Enter(cts.Token)) // Ctrl+C stops SDK calls that were given no token
                    result = session.Submit(request.Code ?? "", cts.Token);
                if (!result.Compiled)
                {
                    if (result.Exception is OperationCanceledException) return new Reply { Status = SubmitStatus.Cancelled };
                    return new Reply
                    {
                        Status = SubmitStatus.CompileError,
                        Diagnostics = result.Errors.Select(d => new Diagnostic { Line = d.Line, Column = d.Column, Id = d.Id, Message = d.Message }).ToList(),
                    };
                }
                if (result.Exception is { } e)
                {
                    e = RecipeContext.Unwrap(e)!;
                    if (e is OperationCanceledException && cts.IsCancellationRequested) return new Reply { Status = SubmitStatus.Cancelled };
                    return new Reply { Status = SubmitStatus.RuntimeError, Error = Describe(e, session) };
                }
                if (result.HasValue && !request.Quiet && !shown.Any(v => ReferenceEquals(v, result.Value) || v.Equals(result.Value)))
                {
                    try { ValueRenderer.Write(Consoles.Out, result.Value); }
                    catch (Exception re) { Console.Error.WriteLine($"(cannot render the value: {RecipeContext.Unwrap(re)!.Message})"); }
                }
                return new Reply { Status = SubmitStatus.Ok };
            }
            finally
            {
                _running = null;
                session.Globals.Context.Show = show;
                session.Globals.Context.Plots.Added = plotsAdded;
                session.Globals.Context.Cancellation = CancellationToken.None;
                if (request.Quiet)
                {
                    Console.SetOut(stdout);
                    Console.SetError(stderr);
                    AnsiConsole.Console = console;
                }
            }
        }

        private Reply Complete(Request request)
        {
            var items = Session().Complete(request.Code ?? "", request.Position);
            return new Reply
            {
                Completions = items.Select(c => new CompletionEntry
                {
                    Text = c.Text, Kind = c.Kind.ToString(), Display = c.Display == c.Text ? null : c.Display,
                    Detail = c.Detail.Length > 0 ? c.Detail : null, Doc = c.Doc.Length > 0 ? c.Doc : null,
                }).ToList(),
                ReplaceStart = items.Count > 0 ? items[0].ReplaceStart : request.Position,
                ReplaceLength = items.Count > 0 ? items[0].ReplaceLength : 0,
            };
        }

        private Reply Signature(Request request)
        {
            if (Session().Signature(request.Code ?? "", request.Position) is not { } help) return new Reply();
            return new Reply
            {
                Signatures = help.Signatures.ToList(), ActiveSignature = help.Active, Parameter = help.Parameter,
                ParameterDoc = help.ParameterDoc, Doc = help.Doc,
            };
        }

        private Reply PluginsInfo()
        {
            var session = Session();
            var globals = typeof(RecipeGlobals).GetMembers(BindingFlags.Public | BindingFlags.Instance)
                .Where(m => m is MethodInfo { IsSpecialName: false } or PropertyInfo && !m.Name.StartsWith("__") && m.DeclaringType != typeof(object))
                .Select(m => m.Name)
                .Concat(session.Plugins.Loaded.Select(p => p.GlobalName!))
                .Distinct().ToList();
            return new Reply
            {
                Plugins = session.Plugins.All.Select(p => new PluginEntry
                {
                    Name = p.Name,
                    Version = p.Version ?? "",
                    Build = p.Build,
                    Sdk = p.SdkVersion is { } sdk ? VirtLab.Sdk.SdkVersion.Format(sdk) : "",
                    Global = p.GlobalName ?? "",
                    Path = p.Path,
                    Status = p.Status.ToString(),
                    Error = p.Error,
                }).ToList(),
                Globals = globals,
            };
        }

        /// <summary>"Type: message" and the stack down to the submission's frame (the shell's own frames below it say nothing).</summary>
        private static string Describe(Exception e, InteractiveSession session)
        {
            var sb = new StringBuilder($"{e.GetType().FullName}: {e.Message}");
            foreach (var frame in new StackTrace(e, fNeedFileInfo: true).GetFrames())
            {
                var method = frame.GetMethod();
                if (method is null) continue;
                var asm = method.DeclaringType?.Assembly;
                var isScript = asm is not null && session.IsScriptAssembly(asm);
                var line = frame.GetFileLineNumber();
                var where = isScript ? "<submission>" : (method.DeclaringType is { } t ? t.FullName + "." : "") + method.Name;
                sb.Append("\n   at ").Append(where).Append(line > 0 ? $" line {line}" : "");
                if (isScript) break;
            }
            if (e.InnerException is { } inner) sb.Append("\n ---> ").Append(inner.GetType().FullName).Append(": ").Append(inner.Message);
            return sb.ToString();
        }
    }

    /// <summary>
    /// A first host's side thread: what the first result needs that the session's own start does not do first. The
    /// compiler's base references (reading some 170 assemblies' metadata, while this thread connects and loads the
    /// plugins), Roslyn's emitter (an empty assembly's emit while the session binds its first submission), then the
    /// reply's serialization and the value renderer. Disjoint from Roslyn's binding on purpose: a throwaway compile of
    /// real code beside the session's made both slower (they JIT the same methods and wait on each other).
    /// </summary>
    private static class SideWarmUp
    {
        /// <param name="references">False when the compile server compiles for this host: it may never need them.</param>
        public static void Start(bool references)
        {
            // VIRTLAB_SIDE_WARMUP=0: off (to measure what it saves).
            if (Environment.ProcessorCount < 2 || Environment.GetEnvironmentVariable("VIRTLAB_SIDE_WARMUP") is "0") return;
            new Thread(() => Run(references)) { Name = "virtlab-side-warm-up", IsBackground = true }.Start();
        }

        private static void Run(bool references)
        {
            try
            {
                // The base references every session shares (made once per process), then Roslyn's emitter, while the
                // session binds its first submission.
                if (references) ScriptCompiler.PrepareFirstCompile(typeof(RecipeGlobals));
                VirtLab.Shell.Cli.StartupTrace.Mark("host: side warm-up: references and emitter");
                _ = System.Text.Json.JsonSerializer.SerializeToUtf8Bytes(new Reply { Status = SubmitStatus.Ok, Plugins = [new PluginEntry()], Globals = [""] }, ProtocolJson.Default.Reply);
                ValueRenderer.Write(Consoles.Create(TextWriter.Null, isTerminal: false), 42);
                VirtLab.Shell.Cli.StartupTrace.Mark("host: side warm-up: reply and renderer");
            }
            catch (Exception e) { Console.Error.WriteLine($"virtlab host: warm-up failed: {e.Message}"); }
        }
    }
}
