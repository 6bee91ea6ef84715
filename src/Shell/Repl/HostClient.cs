using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Sockets;
using System.Reflection;

namespace VirtLab.Shell.Repl;

/// <summary>The evaluation host died (crashed, was killed) while the front end was talking to it.</summary>
public sealed class HostDiedException(string how) : Exception($"evaluation host died ({how})")
{
    public string How { get; } = how;
}

/// <summary>
/// Front-end handle on one evaluation host process: spawns <c>virtlab --host SOCKET [--plugins DIR]…</c>,
/// accepts its connection on a fresh Unix socket and matches replies to requests by id.
/// Holds nothing beyond the process and the socket, so swapping hosts leaves no residue in the front end.
/// </summary>
public sealed class HostClient : IDisposable
{
    private static int _counter;
    private static int _swept;

    private readonly Process _process;
    private readonly Socket _socket;
    private readonly NetworkStream _stream;
    private readonly SemaphoreSlim _writeLock = new(1, 1);
    private readonly ConcurrentDictionary<int, TaskCompletionSource<Reply>> _pending = new();
    private readonly TaskCompletionSource _closed = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private int _nextId;
    private int _disposed;

    public int Pid { get; }
    /// <summary>Completes when the connection ends (host exited, crashed or was killed).</summary>
    public Task Closed => _closed.Task;
    public bool IsAlive => !_closed.Task.IsCompleted;

    private HostClient(Process process, Socket socket)
    {
        _process = process;
        _socket = socket;
        _stream = new NetworkStream(socket, ownsSocket: false);
        Pid = process.Id;
        _ = Task.Run(ReadLoop);
    }

    /// <summary>Starts a host and waits for it to connect (not for it to finish warming up). <paramref name="program"/>:
    /// virtlab.dll or the apphost to start; by default this very program.</summary>
    /// <param name="standby">A spare started ahead (it warms up while nobody asks it anything); else the host is put to use at once.</param>
    public static async Task<HostClient> StartAsync(IReadOnlyList<string> pluginDirectories, string? program = null, CancellationToken ct = default, bool standby = false)
    {
        var dir = Environment.GetEnvironmentVariable("XDG_RUNTIME_DIR") is { Length: > 0 } run && Directory.Exists(run) ? run : Path.GetTempPath();
        var socketPath = Path.Combine(dir, $"virtlab-{Environment.ProcessId}-{Interlocked.Increment(ref _counter)}.sock");
        File.Delete(socketPath);
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(socketPath));
        listener.Listen(1);

        var psi = program is null ? SelfStartInfo() : StartInfo(program);
        psi.ArgumentList.Add("--host");
        psi.ArgumentList.Add(socketPath);
        if (standby) psi.ArgumentList.Add("--standby");
        foreach (var p in pluginDirectories) { psi.ArgumentList.Add("--plugins"); psi.ArgumentList.Add(p); }
        // Script output goes straight to our stdout/stderr; the host never reads the terminal.
        psi.RedirectStandardInput = true;
        psi.UseShellExecute = false;

        var process = Process.Start(psi) ?? throw new InvalidOperationException("cannot start the evaluation host");
        VirtLab.Shell.Cli.StartupTrace.Mark("repl: host spawned");
        process.StandardInput.Close();
        // Housekeeping while the host starts (not before: the spawn is the first result's critical path).
        if (Interlocked.Exchange(ref _swept, 1) == 0) SweepStaleSockets(dir);
        try
        {
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
            timeout.CancelAfter(TimeSpan.FromSeconds(60));
            var accept = listener.AcceptAsync(timeout.Token).AsTask();
            var exited = process.WaitForExitAsync(timeout.Token);
            if (await Task.WhenAny(accept, exited).ConfigureAwait(false) != accept)
            {
                timeout.Cancel();
                throw new HostDiedException(process.HasExited ? DescribeExit(process.ExitCode) : "did not connect within 60 s");
            }
            var socket = await accept.ConfigureAwait(false);
            return new HostClient(process, socket);
        }
        catch
        {
            try { process.Kill(); } catch (InvalidOperationException) { }
            process.Dispose();
            throw;
        }
        finally { File.Delete(socketPath); } // connected sockets outlive their path
    }

    /// <summary>A front end killed (-9) while a host was connecting leaves its socket file; remove those of dead front ends.</summary>
    private static void SweepStaleSockets(string dir)
    {
        string[] paths;
        try { paths = Directory.GetFiles(dir, "virtlab-*-*.sock"); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { return; }
        foreach (var path in paths)
        {
            var parts = Path.GetFileName(path).Split('-');
            if (parts.Length != 3 || !int.TryParse(parts[1], out var pid) || pid == Environment.ProcessId || Directory.Exists($"/proc/{pid}")) continue;
            try { File.Delete(path); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { } // another user's, or gone already
        }
    }

    private static ProcessStartInfo StartInfo(string program)
    {
        if (!program.EndsWith(".dll", StringComparison.OrdinalIgnoreCase)) return new ProcessStartInfo(program);
        var psi = new ProcessStartInfo("dotnet");
        psi.ArgumentList.Add(program);
        return psi;
    }

    /// <summary>How to start this same program again: the apphost, or `dotnet virtlab.dll`.</summary>
    private static ProcessStartInfo SelfStartInfo()
    {
        var exe = Environment.ProcessPath ?? "dotnet";
        var psi = new ProcessStartInfo(exe);
        if (Path.GetFileNameWithoutExtension(exe) == "dotnet")
            psi.ArgumentList.Add(Assembly.GetEntryAssembly()!.Location);
        return psi;
    }

    public async Task<Reply> SendAsync(Request request, CancellationToken ct = default)
    {
        if (!IsAlive) throw new HostDiedException(await ExitDescriptionAsync().ConfigureAwait(false));
        request.Id = Interlocked.Increment(ref _nextId);
        var tcs = new TaskCompletionSource<Reply>(TaskCreationOptions.RunContinuationsAsynchronously);
        _pending[request.Id] = tcs;
        try
        {
            try { await Framing.WriteAsync(_stream, request, _writeLock, ct).ConfigureAwait(false); }
            catch (IOException) { await Closed.ConfigureAwait(false); }
            catch (SocketException) { await Closed.ConfigureAwait(false); }
            using var reg = ct.Register(() => tcs.TrySetCanceled(ct));
            var done = await Task.WhenAny(tcs.Task, Closed).ConfigureAwait(false);
            if (done == tcs.Task) return await tcs.Task.ConfigureAwait(false);
            throw new HostDiedException(await ExitDescriptionAsync().ConfigureAwait(false));
        }
        finally { _pending.TryRemove(request.Id, out _); }
    }

    /// <summary>Fire-and-forget "cancel": the host answers it while the submit is still running.</summary>
    public void SendCancel()
    {
        if (!IsAlive) return;
        _ = SendAsync(new Request { Kind = RequestKind.Cancel }).ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
    }

    private async Task ReadLoop()
    {
        try
        {
            while (true)
            {
                var reply = await Framing.ReadAsync<Reply>(_stream).ConfigureAwait(false);
                if (reply is null) break;
                if (_pending.TryGetValue(reply.Id, out var tcs)) tcs.TrySetResult(reply);
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException or System.Text.Json.JsonException or InvalidDataException) { }
        _closed.TrySetResult();
    }

    /// <summary>"exit code N" or "signal N (SIGxxx)", after giving the process a moment to be reaped.</summary>
    public async Task<string> ExitDescriptionAsync()
    {
        try
        {
            using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            await _process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            return DescribeExit(_process.ExitCode);
        }
        catch (OperationCanceledException) { return "connection lost"; }
        catch (InvalidOperationException) { return "exited"; }
    }

    // .NET reports a child killed by signal N as exit code 128 + N.
    private static string DescribeExit(int code) => code > 128 && code < 128 + 65
        ? $"signal {code - 128}{SignalName(code - 128)}"
        : $"exit code {code}";

    private static string SignalName(int signal) => signal switch
    {
        4 => " SIGILL", 6 => " SIGABRT", 7 => " SIGBUS", 8 => " SIGFPE", 9 => " SIGKILL",
        11 => " SIGSEGV", 15 => " SIGTERM", _ => "",
    };

    public void Kill()
    {
        try { _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { } catch (System.ComponentModel.Win32Exception) { }
    }

    /// <summary>Polite stop: ask the host to exit, kill it if it does not within a moment.</summary>
    public async Task ShutdownAsync()
    {
        if (IsAlive)
        {
            try
            {
                using var cts = new CancellationTokenSource(TimeSpan.FromSeconds(1));
                await SendAsync(new Request { Kind = RequestKind.Shutdown }, cts.Token).ConfigureAwait(false);
                await _process.WaitForExitAsync(cts.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (e is OperationCanceledException or HostDiedException) { }
        }
        Dispose();
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        if (!_process.HasExited) Kill();
        try { _process.WaitForExit(2000); } catch (InvalidOperationException) { }
        _stream.Dispose();
        _socket.Dispose();
        _process.Dispose();
        _writeLock.Dispose();
        foreach (var tcs in _pending.Values) tcs.TrySetCanceled();
    }
}
