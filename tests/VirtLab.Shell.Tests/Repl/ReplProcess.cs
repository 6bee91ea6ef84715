using Xunit;
using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>
/// A real `virtlab` REPL driven through piped stdin (plain line mode), with its stdout and stderr collected
/// as they arrive. HOME points at a private temp folder so history never touches the developer's.
/// </summary>
internal sealed class ReplProcess : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90); // generous: a loaded 2-core host starts Roslyn slowly

    private readonly Process _process;
    private readonly StringBuilder _out = new();
    private readonly StringBuilder _err = new();
    private readonly object _lock = new();

    public string Home { get; }
    public int Pid => _process.Id;

    /// <summary>virtlab.dll in the test output folder (the test project references the Shell project).</summary>
    public static string VirtlabDll => Path.Combine(AppContext.BaseDirectory, "virtlab.dll");

    public ReplProcess(params string[] args) : this(null, args) { }

    /// <param name="workingDirectory">Where the REPL runs (its #r and nuget.config lookups start there); null: the test's.</param>
    public ReplProcess(string? workingDirectory, string[] args) : this(workingDirectory, args, null) { }

    /// <param name="environment">Extra environment variables for the REPL (and so its evaluation hosts).</param>
    public ReplProcess(string? workingDirectory, string[] args, IDictionary<string, string>? environment)
    {
        Home = Directory.CreateTempSubdirectory("virtlab-repl-home-").FullName;
        var psi = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory ?? "",
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        psi.ArgumentList.Add(VirtlabDll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["HOME"] = Home;
        psi.Environment["NO_COLOR"] = "1";
        psi.Environment.Remove("VIRTLAB_PLUGINS");
        foreach (var (k, v) in environment ?? new Dictionary<string, string>()) psi.Environment[k] = v;
        _process = Process.Start(psi)!;
        _process.OutputDataReceived += (_, e) => { if (e.Data is not null) lock (_lock) _out.Append(e.Data).Append('\n'); };
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_lock) _err.Append(e.Data).Append('\n'); };
        _process.BeginOutputReadLine();
        _process.BeginErrorReadLine();
    }

    public string Stdout { get { lock (_lock) return _out.ToString(); } }
    public string Stderr { get { lock (_lock) return _err.ToString(); } }

    public void Send(string line)
    {
        _process.StandardInput.WriteLine(line);
        _process.StandardInput.Flush();
    }

    public void CloseInput() => _process.StandardInput.Close();

    /// <summary>Waits until stdout (or stderr, with <paramref name="stderr"/>) matches; fails with both streams on timeout.</summary>
    public string WaitFor(string pattern, bool stderr = false, TimeSpan? timeout = null)
    {
        var regex = new Regex(pattern, RegexOptions.Multiline);
        var deadline = DateTime.UtcNow + (timeout ?? Timeout);
        while (DateTime.UtcNow < deadline)
        {
            var m = regex.Match(stderr ? Stderr : Stdout);
            if (m.Success) return m.Value;
            if (_process.HasExited && !regex.IsMatch(stderr ? Stderr : Stdout))
            {
                Thread.Sleep(100); // let the last output events arrive
                if (regex.Match(stderr ? Stderr : Stdout) is { Success: true } last) return last.Value;
                break;
            }
            Thread.Sleep(20);
        }
        throw new Xunit.Sdk.XunitException($"timed out waiting for /{pattern}/ on {(stderr ? "stderr" : "stdout")}\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}");
    }

    /// <summary>Counts matches so far (to wait for the n-th occurrence of a line).</summary>
    public int Count(string pattern, bool stderr = false) => Regex.Matches(stderr ? Stderr : Stdout, pattern, RegexOptions.Multiline).Count;

    /// <summary>Waits until <paramref name="condition"/> holds; fails with both streams on timeout.</summary>
    public void WaitUntil(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
                throw new Xunit.Sdk.XunitException($"timed out waiting for {what}\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}");
            Thread.Sleep(20);
        }
    }

    public void WaitForCount(string pattern, int count, bool stderr = false)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (Count(pattern, stderr) < count)
        {
            if (DateTime.UtcNow > deadline)
                throw new Xunit.Sdk.XunitException($"timed out waiting for {count}× /{pattern}/\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}");
            Thread.Sleep(20);
        }
    }

    /// <summary>SIGINT to the front end only (as `kill -INT`), like a Ctrl+C the REPL routes itself.</summary>
    public void Interrupt() => Assert.Equal(0, kill(Pid, SIGINT));

    private const int SIGINT = 2;

    // libc's kill(2): no dependency on a kill binary being installed.
    [System.Runtime.InteropServices.DllImport("libc", SetLastError = true)]
    private static extern int kill(int pid, int sig);

    public int WaitForExit()
    {
        if (!_process.WaitForExit(Timeout)) throw new Xunit.Sdk.XunitException($"REPL did not exit\n--- stdout ---\n{Stdout}\n--- stderr ---\n{Stderr}");
        _process.WaitForExit(); // drain the output events
        return _process.ExitCode;
    }

    public void Dispose()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        _process.Dispose();
        try { Directory.Delete(Home, recursive: true); } catch (IOException) { }
    }
}
