using System.Text.RegularExpressions;
using VirtLab.Shell.Tests.Terminal;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>A test that needs a pseudo-terminal (<see cref="PtyProcess"/>: setsid(1) from util-linux makes the slave
/// the REPL's controlling terminal); skipped with the reason where there is none.</summary>
public sealed class PtyFactAttribute : Xunit.FactAttribute
{
    public PtyFactAttribute()
    {
        if (!PtyReplProcess.IsAvailable) Skip = "setsid(1) (util-linux) is not installed: no controlling pseudo-terminal for the REPL";
    }
}

/// <summary>
/// A real `virtlab` REPL on a pseudo-terminal the test owns (<see cref="PtyProcess"/>), 100×30, TERM=xterm-256color,
/// so the line editor runs as in a terminal. Keys go in as the bytes a terminal sends; the screen output comes back
/// raw (<see cref="Raw"/>) and with the escape sequences taken out (<see cref="Text"/>).
/// </summary>
internal sealed partial class PtyReplProcess : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(90); // generous: a loaded 2-core host starts Roslyn slowly

    private readonly PtyProcess _pty;

    public string Home { get; }

    public static bool IsAvailable => File.Exists("/usr/bin/setsid");

    public PtyReplProcess(Dictionary<string, string>? environment = null)
    {
        Home = Directory.CreateTempSubdirectory("virtlab-pty-home-").FullName;
        var env = new Dictionary<string, string?>
        {
            ["HOME"] = Home,
            ["TERM"] = "xterm-256color",
            ["NO_COLOR"] = null,
            ["VIRTLAB_COLOR"] = null,
            ["VIRTLAB_PLUGINS"] = null,
        };
        foreach (var (k, v) in environment ?? []) env[k] = v;
        _pty = new PtyProcess(Directory.GetCurrentDirectory(), env, 100, 30, "dotnet", ReplProcess.VirtlabDll);
    }

    public string Raw => _pty.Screen;

    /// <summary>The output without escape sequences (colours, cursor moves): what a reader sees, roughly.</summary>
    public string Text => Ansi().Replace(Raw, "");

    [GeneratedRegex(@"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Z0-9]|[=>])")]
    private static partial Regex Ansi();

    /// <summary>Bytes as a terminal sends them: "\r" for Enter, "\t" Tab, "\u0012" Ctrl+R, <see cref="Up"/>…</summary>
    public void Keys(string keys) => _pty.Type(keys);

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
            if (_pty.HasExited) { Thread.Sleep(100); if (regex.Match(Text) is { Success: true } last) return last.Value; break; }
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
        if (!_pty.WaitForExit(Timeout)) throw new Xunit.Sdk.XunitException($"REPL did not exit\n--- screen ---\n{Text}");
        return _pty.ExitCode;
    }

    public void Dispose()
    {
        _pty.Dispose();
        try { Directory.Delete(Home, recursive: true); } catch (IOException) { }
    }
}
