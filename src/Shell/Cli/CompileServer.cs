using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using VirtLab.Shell.Scripting;

namespace VirtLab.Shell.Cli;

/// <summary>A REPL submission the compile server emitted (null on errors), whether its last expression is its value, and
/// the files its <c>#r</c> directives named.</summary>
public sealed record RemoteSubmission(EmittedSubmission? Submission, IReadOnlyList<ScriptDiagnostic> Diagnostics, bool HasValue,
    IReadOnlyList<string> References, string How);

/// <summary>What the compile server gave back: a recipe or its compile errors, and how it was compiled.</summary>
public sealed record ServerCompile(CompiledRecipe? Recipe, IReadOnlyList<string> Errors, string How);

/// <summary>
/// A detached process that keeps Roslyn warm and compiles recipes for <c>virtlab run</c> (csc's VBCSCompiler idea): a
/// cache miss then costs a socket round trip and a warm compile instead of loading and JIT-compiling Roslyn.
/// One server per user and per build of the shell: its Unix socket lives in <c>$XDG_CACHE_HOME/virtlab/server/</c>
/// (mode 0700) under a name derived from the shell's folder and the shell's and SDK's module version ids, so a rebuilt
/// or another worktree's shell never talks to it. The first client that finds none starts one (<c>setsid</c>, stdio
/// not inherited) and compiles in-process meanwhile; the server waits for that client to exit, warms up, then listens.
/// It exits after <see cref="IdleTimeout"/> without a request, when its own build changes on disk, or on
/// <c>virtlab server stop</c>. Any failure (no server, refused, died, timeout, declined) makes the client compile
/// in-process, as without a server. <c>VIRTLAB_SERVER=0</c> turns it off; under <c>CI=true</c> it is off unless
/// <c>VIRTLAB_SERVER=1</c>. Compiling with <c>#r "nuget: …"</c> stays in-process (its restore state is per process).
/// </summary>
public static class CompileServer
{
    public const string EnvironmentVariable = "VIRTLAB_SERVER";
    internal const string CompileRequest = "virtlab-compile 1", StopRequest = "virtlab-stop 1", StatusRequest = "virtlab-status 1",
        SubmissionRequest = "virtlab-submission 1";
    private static readonly UTF8Encoding Utf8 = new(false);

    /// <summary>Whether clients use (and start) the server: <c>VIRTLAB_SERVER</c> decides; unset, on except under CI.</summary>
    public static bool Enabled => Environment.GetEnvironmentVariable(EnvironmentVariable) switch
    {
        "0" or "false" or "off" => false,
        "1" or "true" or "on" => true,
        _ => Environment.GetEnvironmentVariable("CI") is not { Length: > 0 } ci || ci is "0" or "false",
    };

    /// <summary>How long a server waits for a request before it exits (<c>VIRTLAB_SERVER_IDLE</c> seconds; 10 minutes).</summary>
    public static TimeSpan IdleTimeout =>
        double.TryParse(Environment.GetEnvironmentVariable("VIRTLAB_SERVER_IDLE"), System.Globalization.CultureInfo.InvariantCulture, out var s) && s > 0
            ? TimeSpan.FromSeconds(s) : TimeSpan.FromMinutes(10);

    /// <summary>$XDG_CACHE_HOME/virtlab/server, else $HOME/.cache/virtlab/server (not VIRTLAB_CACHE: one server per
    /// build, whatever the cache). Always absolute: the server runs from / and must find the same folder.</summary>
    public static string Folder
    {
        get
        {
            var xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
            var home = Environment.GetEnvironmentVariable("HOME");
            var baseDir = xdg is { Length: > 0 } && Path.IsPathRooted(xdg) ? xdg
                : home is { Length: > 0 } && Path.IsPathRooted(home) ? Path.Combine(home, ".cache")
                : Path.Combine(Path.GetTempPath(), "virtlab-" + Environment.UserName);
            return Path.Combine(baseDir, "virtlab", "server");
        }
    }

    /// <summary>This build of the shell: its folder and the shell's and SDK's module version ids.</summary>
    public static string BuildId { get; } = RecipeCache.HashHex(Utf8.GetBytes(
        $"{AppContext.BaseDirectory}\n{typeof(CompileServer).Assembly.ManifestModule.ModuleVersionId}\n{typeof(VirtLab.Sdk.SdkVersion).Assembly.ManifestModule.ModuleVersionId}"))[..16];

    public static string SocketPath => SocketPathIn(Folder);

    /// <summary>This build's socket for a server folder.</summary>
    public static string SocketPathIn(string folder)
    {
        var path = Path.Combine(folder, BuildId + ".sock");
        // sun_path holds 108 bytes: a deep HOME gets a name in the temp folder instead (still per user and build).
        if (Utf8.GetByteCount(path) < 100) return path;
        var dirHash = RecipeCache.HashHex(Utf8.GetBytes(folder))[..8];
        return Path.Combine(Path.GetTempPath(), $"virtlab-{dirHash}-{BuildId}.sock");
    }

    internal static string LockPath => Path.Combine(Folder, BuildId + ".lock");
    public static string LogPath => Path.Combine(Folder, BuildId + ".log");

    // ---------------------------------------------------------------- client

    /// <summary>Compiles through the server; null (and <paramref name="why"/>) when the caller should compile in-process.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static ServerCompile? TryCompile(string file, string text, CompileInputs inputs, string keyForNames, out string why)
    {
        if (!Enabled) { why = $"server off ({EnvironmentVariable}=0 or CI)"; return null; }
        if (text.Contains("nuget:", StringComparison.OrdinalIgnoreCase)) { why = "#r \"nuget: …\" compiles in-process"; return null; }
        var socket = Connect();
        if (socket is null)
        {
            why = StartIfAbsent() ? "no server running; started one" : "server still warming up";
            return null;
        }
        try
        {
            socket.ReceiveTimeout = 60_000; // a hung server: compile here instead
            socket.SendTimeout = 10_000;
            using var stream = new NetworkStream(socket, ownsSocket: false);
            using var w = new BinaryWriter(stream, Utf8, leaveOpen: true);
            w.Write(CompileRequest);
            w.Write(Path.GetFullPath(file));
            w.Write(text);
            w.Write(keyForNames);
            WriteInputs(w, inputs);
            w.Flush();
            using var r = new BinaryReader(stream, Utf8, leaveOpen: true);
            var status = r.ReadString();
            var how = r.ReadString();
            if (status != "ok" && status != "errors") { why = $"server declined: {how}"; return null; }
            var errors = ReadList(r);
            if (status == "errors") { why = ""; return new ServerCompile(null, errors, $"server ({how})"); }
            var subs = new List<CompiledRecipe.Submission>();
            for (int i = r.ReadInt32(); i > 0; i--)
            {
                var type = r.ReadString();
                var image = r.ReadBytes(r.ReadInt32());
                subs.Add(new(type.Length == 0 ? null : type, image));
            }
            var sources = ReadHashes(r);
            var refs = ReadHashes(r);
            var warnings = ReadList(r);
            why = "";
            return new ServerCompile(new CompiledRecipe(subs, sources, refs, warnings), [], $"server ({how})");
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or ObjectDisposedException or FormatException)
        {
            why = $"server failed ({e.Message})";
            return null;
        }
        finally { socket.Dispose(); }
    }

    /// <summary>One REPL submission compiled by the server (for an evaluation host whose own Roslyn is still cold): the
    /// chain is the session's preamble and successful submissions (assembly name, code), then the one to emit. Null
    /// (and <paramref name="why"/>) when the host should compile it itself.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static RemoteSubmission? TryCompileSubmission(CompileInputs inputs, string baseDirectory, IReadOnlyList<(string Name, string Code)> chain, out string why)
    {
        if (!Enabled) { why = "server off"; return null; }
        if (chain.Any(c => c.Code.Contains("nuget:", StringComparison.OrdinalIgnoreCase))) { why = "#r \"nuget: …\" compiles in-process"; return null; }
        var socket = Connect();
        if (socket is null)
        {
            why = StartIfAbsent() ? "no server running; started one" : "server still warming up";
            return null;
        }
        try
        {
            socket.ReceiveTimeout = 60_000;
            socket.SendTimeout = 10_000;
            using var stream = new NetworkStream(socket, ownsSocket: false);
            using var w = new BinaryWriter(stream, Utf8, leaveOpen: true);
            w.Write(SubmissionRequest);
            w.Write(baseDirectory);
            WriteInputs(w, inputs);
            w.Write(chain.Count);
            foreach (var (name, code) in chain) { w.Write(name); w.Write(code); }
            w.Flush();
            using var r = new BinaryReader(stream, Utf8, leaveOpen: true);
            var status = r.ReadString();
            var how = r.ReadString();
            if (status != "ok" && status != "errors") { why = $"server declined: {how}"; return null; }
            var diags = new List<ScriptDiagnostic>();
            for (int i = r.ReadInt32(); i > 0; i--)
                diags.Add(new ScriptDiagnostic(r.ReadString(), r.ReadBoolean(), r.ReadString(), r.ReadString(), r.ReadInt32(), r.ReadInt32(), r.ReadString()));
            why = "";
            if (status == "errors") return new RemoteSubmission(null, diags, false, [], $"server ({how})");
            var assembly = r.ReadString();
            var type = r.ReadString();
            var image = r.ReadBytes(r.ReadInt32());
            var hasValue = r.ReadBoolean();
            var references = ReadList(r);
            return new RemoteSubmission(new EmittedSubmission(assembly, type.Length == 0 ? null : type, image), diags, hasValue, references, $"server ({how})");
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or ObjectDisposedException or FormatException)
        {
            why = $"server failed ({e.Message})";
            return null;
        }
        finally { socket.Dispose(); }
    }

    /// <summary>Whether this build's server looks up (its socket file exists: a killed one's may too).</summary>
    public static bool IsListening => Enabled && File.Exists(SocketPath);

    private static Socket? Connect()
    {
        var path = SocketPath;
        if (!File.Exists(path)) return null;
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(path));
            return socket;
        }
        catch (SocketException) { socket.Dispose(); return null; } // a killed server's socket file: refused
    }

    /// <summary>Starts a server unless one holds the lock (serving or still warming up). Returns whether it started one.</summary>
    private static bool StartIfAbsent()
    {
        try
        {
            CreateFolder();
            using (new FileStream(LockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None)) { }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return false; }
        try
        {
            var exe = Environment.ProcessPath ?? "dotnet";
            var setsid = File.Exists("/usr/bin/setsid") ? "/usr/bin/setsid" : null;
            // Stdio are pipes closed at once, never this process's: a test runner reading our output must not wait for the server.
            var psi = new ProcessStartInfo(setsid ?? exe)
            {
                UseShellExecute = false, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
                WorkingDirectory = "/",
            };
            if (setsid is not null) { psi.ArgumentList.Add("-f"); psi.ArgumentList.Add(exe); }
            if (Path.GetFileNameWithoutExtension(exe) == "dotnet") psi.ArgumentList.Add(typeof(CompileServer).Assembly.Location);
            foreach (var a in new[] { "server", "run", "--after", Environment.ProcessId.ToString(System.Globalization.CultureInfo.InvariantCulture) })
                psi.ArgumentList.Add(a);
            psi.Environment.Remove("VIRTLAB_TRACE_STARTUP");
            using var p = Process.Start(psi);
            if (p is null) return false;
            p.StandardInput.Close();
            p.StandardOutput.Close();
            p.StandardError.Close();
            return true;
        }
        catch (Exception e) when (e is IOException or System.ComponentModel.Win32Exception or InvalidOperationException) { return false; }
    }

    internal static void CreateFolder() =>
        _ = OperatingSystem.IsWindows() ? Directory.CreateDirectory(Folder)
            : Directory.CreateDirectory(Folder, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);

    /// <summary><c>virtlab server status</c>: one line about this build's server.</summary>
    public static int Status(TextWriter output)
    {
        using var socket = Connect();
        if (socket is null) { output.WriteLine($"no compile server for this build ({SocketPath})"); return 1; }
        socket.ReceiveTimeout = 5_000;
        try
        {
            using var stream = new NetworkStream(socket, ownsSocket: false);
            new BinaryWriter(stream, Utf8, leaveOpen: true).Write(StatusRequest);
            output.WriteLine(new BinaryReader(stream, Utf8, leaveOpen: true).ReadString());
            return 0;
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException) { output.WriteLine($"compile server not answering: {e.Message}"); return 1; }
    }

    /// <summary><c>virtlab server stop</c>: asks this build's server to exit and waits until it has (≤ 5 s).</summary>
    public static int Stop(TextWriter output)
    {
        using var socket = Connect();
        if (socket is null) { output.WriteLine("no compile server running for this build"); return 0; }
        socket.ReceiveTimeout = 5_000;
        try
        {
            using var stream = new NetworkStream(socket, ownsSocket: false);
            new BinaryWriter(stream, Utf8, leaveOpen: true).Write(StopRequest);
            var pid = new BinaryReader(stream, Utf8, leaveOpen: true).ReadInt32();
            var sw = Stopwatch.StartNew();
            while (Directory.Exists($"/proc/{pid}") && sw.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(10);
            output.WriteLine($"compile server {pid} stopped");
            return 0;
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException) { output.WriteLine($"compile server not answering: {e.Message}"); return 1; }
    }


    internal static void WriteList(BinaryWriter w, IReadOnlyList<string> items)
    {
        w.Write(items.Count);
        foreach (var s in items) w.Write(s);
    }

    /// <summary>The compile inputs on the wire (both request kinds): plugin paths, imports, the preamble or none.</summary>
    internal static void WriteInputs(BinaryWriter w, CompileInputs inputs)
    {
        WriteList(w, inputs.PluginPaths);
        WriteList(w, inputs.Imports);
        w.Write(inputs.Preamble ?? "");
        w.Write(inputs.Preamble is not null);
    }

    internal static CompileInputs ReadInputs(BinaryReader r)
    {
        var paths = ReadList(r);
        var imports = ReadList(r);
        var preamble = r.ReadString();
        return new CompileInputs(paths, imports, r.ReadBoolean() ? preamble : null);
    }

    internal static List<string> ReadList(BinaryReader r)
    {
        var n = r.ReadInt32();
        if (n < 0 || n > 1_000_000) throw new FormatException("bad list length");
        var list = new List<string>(n);
        for (int i = 0; i < n; i++) list.Add(r.ReadString());
        return list;
    }

    internal static void WriteHashes(BinaryWriter w, IReadOnlyList<CompiledRecipe.FileHash> items)
    {
        w.Write(items.Count);
        foreach (var h in items) { w.Write(h.Path); w.Write(h.Hash); }
    }

    internal static List<CompiledRecipe.FileHash> ReadHashes(BinaryReader r)
    {
        var n = r.ReadInt32();
        if (n < 0 || n > 1_000_000) throw new FormatException("bad list length");
        var list = new List<CompiledRecipe.FileHash>(n);
        for (int i = 0; i < n; i++) list.Add(new(r.ReadString(), r.ReadString()));
        return list;
    }
}

/// <summary>The server side of <see cref="CompileServer"/> (Roslyn lives here only: the client stays Roslyn-free).</summary>
internal static class CompileServerProcess
{
    private static readonly UTF8Encoding Utf8 = new(false);
    private static string Folder => CompileServer.Folder;
    private static string LockPath => CompileServer.LockPath;
    private static string LogPath => CompileServer.LogPath;
    private static string SocketPath => CompileServer.SocketPath;
    private static TimeSpan IdleTimeout => CompileServer.IdleTimeout;
    private const string CompileRequest = CompileServer.CompileRequest, StopRequest = CompileServer.StopRequest, StatusRequest = CompileServer.StatusRequest,
        SubmissionRequest = CompileServer.SubmissionRequest;
    internal static void CreateFolder() => CompileServer.CreateFolder();
    private static void WriteList(BinaryWriter w, IReadOnlyList<string> items) => CompileServer.WriteList(w, items);
    private static List<string> ReadList(BinaryReader r) => CompileServer.ReadList(r);
    private static CompileInputs ReadInputs(BinaryReader r) => CompileServer.ReadInputs(r);
    private static void WriteHashes(BinaryWriter w, IReadOnlyList<CompiledRecipe.FileHash> items) => CompileServer.WriteHashes(w, items);

    /// <summary>The server process (<c>virtlab server run</c>): one per build (a lock file), compiles one request at a time.</summary>
    /// <param name="after">The client that started it: the server warms up only once that one has exited (≤ 10 s), so
    /// the two do not share two cores while the client compiles in-process.</param>
    public static int Run(int? after)
    {
        CreateFolder();
        FileStream lockFile;
        try { lockFile = new FileStream(LockPath, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None); }
        catch (IOException) { return 0; } // another server of this build is running
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => c.Cancel = true);
        using var sighup = PosixSignalRegistration.Create(PosixSignal.SIGHUP, c => c.Cancel = true);
        using var log = new StreamWriter(new FileStream(LogPath, FileMode.Create, FileAccess.Write, FileShare.Read), Utf8) { AutoFlush = true };
        Console.SetOut(log);
        Console.SetError(log);
        var socketPath = SocketPath;
        var dll = typeof(CompileServer).Assembly.Location;
        var built = File.GetLastWriteTimeUtc(dll);
        var started = Stopwatch.StartNew();
        var served = 0;
        try
        {
            if (after is { } pid)
                while (Directory.Exists($"/proc/{pid}") && started.Elapsed < TimeSpan.FromSeconds(10)) Thread.Sleep(20);
            var warm = Stopwatch.StartNew();
            var warmed = WarmUp(log);
            log.WriteLine($"{DateTime.Now:HH:mm:ss} server {Environment.ProcessId} for {dll}: warm-up {(warmed ? "done" : "failed")} in {warm.ElapsedMilliseconds} ms");

            File.Delete(socketPath); // a killed server's (we hold the lock: no live one uses it)
            using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            listener.Bind(new UnixDomainSocketEndPoint(socketPath));
            if (!OperatingSystem.IsWindows()) File.SetUnixFileMode(socketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            listener.Listen(16);
            var idle = Stopwatch.StartNew();
            var references = new Dictionary<string, (DateTime, long, Microsoft.CodeAnalysis.MetadataReference)>(StringComparer.Ordinal);
            while (true)
            {
                var accept = listener.AcceptAsync();
                while (!accept.Wait(TimeSpan.FromSeconds(1)))
                {
                    string? reason = idle.Elapsed > IdleTimeout ? "idle"
                        : !File.Exists(dll) || File.GetLastWriteTimeUtc(dll) != built ? "its build changed on disk"
                        : !File.Exists(socketPath) ? "its socket was removed" : null;
                    if (reason is null) continue;
                    log.WriteLine($"{DateTime.Now:HH:mm:ss} exits: {reason} (served {served})");
                    return 0;
                }
                using var connection = accept.Result;
                connection.ReceiveTimeout = 10_000;
                var stop = Serve(connection, warmed, ref served, references, started, log);
                idle.Restart();
                if (stop is not null)
                {
                    log.WriteLine($"{DateTime.Now:HH:mm:ss} exits: {stop} (served {served})");
                    return 0;
                }
            }
        }
        catch (Exception e)
        {
            log.WriteLine($"{DateTime.Now:HH:mm:ss} failed: {e}");
            return 1;
        }
        finally
        {
            try { File.Delete(socketPath); } catch (IOException) { }
            lockFile.Dispose();
        }
    }

    /// <returns>Why the server must exit now, or null.</returns>
    private static string? Serve(Socket connection, bool warmed, ref int served,
        Dictionary<string, (DateTime, long, Microsoft.CodeAnalysis.MetadataReference)> references, Stopwatch started, TextWriter log)
    {
        try
        {
            using var stream = new NetworkStream(connection, ownsSocket: false);
            using var r = new BinaryReader(stream, Utf8, leaveOpen: true);
            using var w = new BinaryWriter(stream, Utf8, leaveOpen: true);
            switch (r.ReadString())
            {
                case StopRequest:
                    w.Write(Environment.ProcessId);
                    return "asked to stop";
                case StatusRequest:
                    w.Write($"compile server {Environment.ProcessId}: {(warmed ? "warm" : "not warmed")}, {served} compile{(served == 1 ? "" : "s")}, up {started.Elapsed.TotalSeconds:0} s, idle timeout {IdleTimeout.TotalSeconds:0} s, {SocketPath}");
                    return null;
                case CompileRequest:
                    break;
                case SubmissionRequest:
                    return ServeSubmission(r, w, warmed, ref served, references, log);
                default:
                    return null;
            }
            var file = r.ReadString();
            var text = r.ReadString();
            var key = r.ReadString();
            var inputs = ReadInputs(r);
            var sw = Stopwatch.StartNew();
            CompiledRecipe? recipe;
            IReadOnlyList<ScriptDiagnostic> diags;
            try
            {
                (recipe, diags) = RecipeBuilder.Compile(file, text, inputs, key, path => Reference(references, path));
            }
            catch (Exception e)
            {
                return Decline(w, $"the compile threw {e.GetType().Name}: {e.Message}");
            }
            // #r "nuget: …" (from a #load-ed file) restored here: its closure is process state; the client compiles
            // in-process and this server makes way for a fresh one.
            if (DeclinedForNuGet(w) is { } exit) return exit;
            served++;
            var how = $"{(warmed ? "warm" : "cold")}, {sw.ElapsedMilliseconds} ms, compile #{served} of server {Environment.ProcessId}";
            log.WriteLine($"{DateTime.Now:HH:mm:ss} {file}: {(recipe is null ? "errors" : "ok")}, {sw.ElapsedMilliseconds} ms");
            if (recipe is null)
            {
                w.Write("errors");
                w.Write(how);
                WriteList(w, [.. diags.Where(d => d.IsError).Select(d => d.Formatted)]);
                return null;
            }
            w.Write("ok");
            w.Write(how);
            WriteList(w, []);
            w.Write(recipe.Submissions.Count);
            foreach (var s in recipe.Submissions)
            {
                w.Write(s.TypeName ?? "");
                w.Write(s.Image.Length);
                w.Write(s.Image);
            }
            WriteHashes(w, recipe.Sources);
            WriteHashes(w, recipe.References);
            WriteList(w, recipe.Warnings);
            w.Flush();
            return null;
        }
        catch (Exception e) when (e is IOException or SocketException or EndOfStreamException or ObjectDisposedException)
        {
            log.WriteLine($"{DateTime.Now:HH:mm:ss} a client went away: {e.Message}");
            return null;
        }
    }

    /// <summary>Tells the client to compile in-process, and why; the server goes on (null: no reason to exit).</summary>
    private static string? Decline(BinaryWriter w, string why)
    {
        w.Write("declined");
        w.Write(why);
        return null;
    }

    /// <summary>A compile that restored <c>#r "nuget: …"</c> left its closure as process state: the client compiles
    /// in-process and this server exits to make way for a fresh one. Null when there was none.</summary>
    private static string? DeclinedForNuGet(BinaryWriter w)
    {
        if (NuGetMetadataResolver.ClosurePaths.Count == 0) return null;
        Decline(w, "#r \"nuget: …\" compiles in-process");
        return "#r nuget state";
    }

    /// <summary>A REPL submission on the session's chain (rebuilt from the code each time: binding the earlier
    /// submissions is cheap next to a cold Roslyn in the host).</summary>
    private static string? ServeSubmission(BinaryReader r, BinaryWriter w, bool warmed, ref int served,
        Dictionary<string, (DateTime, long, Microsoft.CodeAnalysis.MetadataReference)> references, TextWriter log)
    {
        var baseDirectory = r.ReadString();
        var inputs = ReadInputs(r);
        var chain = new List<(string Name, string Code)>();
        for (int i = r.ReadInt32(); i > 0; i--) chain.Add((r.ReadString(), r.ReadString()));
        if (chain.Count == 0) return Decline(w, "empty chain");
        var sw = Stopwatch.StartNew();
        EmittedSubmission? sub;
        IReadOnlyList<ScriptDiagnostic> diags;
        bool hasValue;
        List<string> directiveReferences;
        try
        {
            var compiler = new ScriptCompiler(inputs, typeof(VirtLab.Sdk.Measure.RecipeGlobals), baseDirectory, path => Reference(references, path));
            Microsoft.CodeAnalysis.CSharp.CSharpCompilation? previous = null;
            foreach (var (name, code) in chain.SkipLast(1)) previous = compiler.CreateSubmission(name, ScriptCompiler.Parse(code), previous);
            var compilation = compiler.CreateSubmission(chain[^1].Name, ScriptCompiler.Parse(chain[^1].Code), previous);
            (sub, diags) = compiler.Emit(compilation);
            hasValue = sub is not null && InteractiveSession.HasTrailingValue(compilation, compilation.SyntaxTrees.First(t => t.FilePath == ""));
            directiveReferences = sub is null ? [] : [.. compilation.DirectiveReferences.OfType<Microsoft.CodeAnalysis.PortableExecutableReference>().Select(x => x.FilePath).OfType<string>()];
        }
        catch (Exception e)
        {
            return Decline(w, $"the compile threw {e.GetType().Name}: {e.Message}");
        }
        if (DeclinedForNuGet(w) is { } exit) return exit;
        served++;
        log.WriteLine($"{DateTime.Now:HH:mm:ss} submission {chain[^1].Name}: {(sub is null ? "errors" : "ok")}, {sw.ElapsedMilliseconds} ms");
        w.Write(sub is null ? "errors" : "ok");
        w.Write($"{(warmed ? "warm" : "cold")}, {sw.ElapsedMilliseconds} ms, compile #{served} of server {Environment.ProcessId}");
        w.Write(diags.Count);
        foreach (var d in diags)
        {
            w.Write(d.Id); w.Write(d.IsError); w.Write(d.Message); w.Write(d.File); w.Write(d.Line); w.Write(d.Column); w.Write(d.Formatted);
        }
        if (sub is not null)
        {
            w.Write(sub.AssemblyName);
            w.Write(sub.TypeName ?? "");
            w.Write(sub.Image.Length);
            w.Write(sub.Image);
            w.Write(hasValue);
            WriteList(w, directiveReferences);
        }
        w.Flush();
        return null;
    }

    /// <summary>A plugin's reference, kept while its file is unchanged (Roslyn then reads its metadata once).</summary>
    private static Microsoft.CodeAnalysis.MetadataReference Reference(
        Dictionary<string, (DateTime Written, long Length, Microsoft.CodeAnalysis.MetadataReference Reference)> cache, string path)
    {
        var info = new FileInfo(path);
        if (cache.TryGetValue(path, out var c) && c.Written == info.LastWriteTimeUtc && c.Length == info.Length) return c.Reference;
        var reference = ScriptCompiler.Reference(path);
        cache[path] = (info.LastWriteTimeUtc, info.Length, reference);
        return reference;
    }

    /// <summary>Compiles a throwaway recipe: loads Roslyn and JIT-compiles its parse, bind and emit paths.</summary>
    private static bool WarmUp(TextWriter log)
    {
        var file = Path.Combine(Folder, $"warm-up-{Environment.ProcessId}.csx");
        try
        {
            File.WriteAllText(file, """
                var size = 64.MiB();
                var xs = Enumerable.Range(0, 10).Select(i => i * 2).ToList();
                foreach (var x in xs) Console.Write(x);
                Expect(xs.Count == 10, "ten");
                Result("answer", 6 * 7);
                record Point(int X, int Y);
                string Describe(Point p) => $"{p.X},{p.Y}";
                """);
            var (recipe, _) = RecipeBuilder.Compile(file, File.ReadAllText(file), new CompileInputs([], [.. ScriptPreamble.DefaultImports], null), "warm-up");
            // And a REPL chain: a submission on a previous one, its trailing value.
            var compiler = new ScriptCompiler(new CompileInputs([], [.. ScriptPreamble.DefaultImports], null), typeof(VirtLab.Sdk.Measure.RecipeGlobals), Folder);
            var first = compiler.CreateSubmission("virtlab-warm-up-1", ScriptCompiler.Parse("var a = 6;"), null);
            var second = compiler.CreateSubmission("virtlab-warm-up-2", ScriptCompiler.Parse("a * 7"), first);
            var (sub, _) = compiler.Emit(second);
            return recipe is not null && sub is not null && InteractiveSession.HasTrailingValue(second, second.SyntaxTrees.First(t => t.FilePath == ""));
        }
        catch (Exception e)
        {
            log.WriteLine($"warm-up failed: {e}");
            return false;
        }
        finally { try { File.Delete(file); } catch (IOException) { } }
    }
}
