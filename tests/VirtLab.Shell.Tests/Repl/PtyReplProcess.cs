using System.Diagnostics;
using System.Text;
using System.Text.RegularExpressions;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>A test that needs a pseudo-terminal (util-linux <c>script</c>); skipped with the reason where there is none.</summary>
public sealed class PtyFactAttribute : Xunit.FactAttribute
{
    public PtyFactAttribute()
    {
        if (!PtyReplProcess.IsAvailable) Skip = "util-linux script (makes the pseudo-terminal) is not installed";
    }
}

/// <summary>
/// A real `virtlab` REPL on a pseudo-terminal (util-linux <c>script</c> makes the pty: no P/Invoke here), 100×30,
/// TERM=xterm-256color, so the line editor runs as in a terminal. Keys go in as the bytes a terminal sends; the screen
/// output comes back raw (<see cref="Raw"/>) and with the escape sequences taken out (<see cref="Text"/>).
/// </summary>
internal sealed partial class PtyReplProcess : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    private readonly Process _process;
    private readonly StringBuilder _out = new();
    private readonly object _lock = new();
    private readonly Thread _reader;

    public string Home { get; }

    public static bool IsAvailable => File.Exists("/usr/bin/script") || File.Exists("/bin/script");

    public PtyReplProcess(Dictionary<string, string>? environment = null)
    {
        Home = Directory.CreateTempSubdirectory("virtlab-pty-home-").FullName;
        var psi = new ProcessStartInfo("script")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var a in new[] { "-qfec", $"stty cols 100 rows 30; exec dotnet {ReplProcess.VirtlabDll}", "/dev/null" }) psi.ArgumentList.Add(a);
        psi.Environment["HOME"] = Home;
        psi.Environment["TERM"] = "xterm-256color";
        psi.Environment.Remove("NO_COLOR");
        psi.Environment.Remove("VIRTLAB_COLOR");
        psi.Environment.Remove("VIRTLAB_PLUGINS");
        foreach (var (k, v) in environment ?? []) psi.Environment[k] = v;
        _process = Process.Start(psi)!;
        _process.ErrorDataReceived += (_, e) => { if (e.Data is not null) lock (_lock) _out.Append(e.Data).Append('\n'); };
        _process.BeginErrorReadLine();
        _reader = new Thread(() =>
        {
            var buffer = new char[4096];
            int n;
            while ((n = _process.StandardOutput.Read(buffer, 0, buffer.Length)) > 0)
                lock (_lock) _out.Append(buffer, 0, n);
        }) { IsBackground = true };
        _reader.Start();
    }

    public string Raw { get { lock (_lock) return _out.ToString(); } }

    /// <summary>The output without escape sequences (colours, cursor moves): what a reader sees, roughly.</summary>
    public string Text => Ansi().Replace(Raw, "");

    [GeneratedRegex(@"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Z0-9]|[=>])")]
    private static partial Regex Ansi();

    /// <summary>Bytes as a terminal sends them: "\r" for Enter, "\t" Tab, "\u0012" Ctrl+R, <see cref="Up"/>…</summary>
    public void Keys(string keys)
    {
        _process.StandardInput.Write(keys);
        _process.StandardInput.Flush();
    }

    public const string Up = "\u001b[A";
    public const string Down = "\u001b[B";
    public const string Left = "\u001b[D";
    public const string F1 = "\u001bOP";

    public string WaitFor(string pattern, TimeSpan? timeout = null)
    {
        var regex = new Regex(pattern, RegexOptions.Multiline);
        var deadline = DateTime.UtcNow + (timeout ?? Timeout);
        while (DateTime.UtcNow < deadline)
        {
            if (regex.Match(Text) is { Success: true } m) return m.Value;
            if (_process.HasExited) { Thread.Sleep(100); if (regex.Match(Text) is { Success: true } last) return last.Value; break; }
            Thread.Sleep(20);
        }
        throw new Xunit.Sdk.XunitException($"timed out waiting for /{pattern}/\n--- screen (escapes removed) ---\n{Text}");
    }

    public void WaitForCount(string pattern, int count)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (Count(pattern) < count)
        {
            if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"timed out waiting for {count}× /{pattern}/\n--- screen ---\n{Text}");
            Thread.Sleep(20);
        }
    }

    public int Count(string pattern) => Regex.Matches(Text, pattern, RegexOptions.Multiline).Count;

    public int WaitForExit()
    {
        if (!_process.WaitForExit(Timeout)) throw new Xunit.Sdk.XunitException($"REPL did not exit\n--- screen ---\n{Text}");
        _process.WaitForExit();
        return _process.ExitCode;
    }

    public void Dispose()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        _process.Dispose();
        try { Directory.Delete(Home, recursive: true); } catch (IOException) { }
    }
}
