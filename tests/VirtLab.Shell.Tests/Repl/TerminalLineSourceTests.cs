using System.Collections.Concurrent;
using RadLine;
using Spectre.Console;
using VirtLab.Shell.Repl;
using Xunit;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>The terminal line source on a real RadLine editor, with scripted keys and a recording console.</summary>
public sealed class TerminalLineSourceTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private sealed class ScriptedKeys : IInputSource
    {
        private readonly ConcurrentQueue<ConsoleKeyInfo> _keys = new();
        public bool ByPassProcessing => true;
        public bool IsKeyAvailable() => !_keys.IsEmpty;
        public ConsoleKeyInfo ReadKey() => _keys.TryDequeue(out var k) ? k : throw new InvalidOperationException("no key");

        public ScriptedKeys Type(string text)
        {
            foreach (var c in text) _keys.Enqueue(new ConsoleKeyInfo(c, ConsoleKey.NoName, false, false, false));
            return this;
        }

        public ScriptedKeys Press(ConsoleKey key, bool shift = false)
        {
            var c = key switch { ConsoleKey.Enter => '\r', ConsoleKey.Tab => '\t', _ => '\0' };
            _keys.Enqueue(new ConsoleKeyInfo(c, key, shift, false, false));
            return this;
        }
    }

    private static (TerminalLineSource Source, ScriptedKeys Keys) Create(IEnumerable<string> history, Func<string, int, Reply?>? complete = null)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = AnsiSupport.Yes,
            ColorSystem = ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.Yes,
            Out = new AnsiConsoleOutput(new StringWriter()),
        });
        var keys = new ScriptedKeys();
        var source = new TerminalLineSource(new CSharpHighlighter(), new HostCompletion(complete ?? ((_, _) => null)), history, console, keys);
        return (source, keys);
    }

    private static async Task<string> Read(TerminalLineSource source, string preceding = "")
    {
        using var cts = new CancellationTokenSource(Timeout);
        var (status, line) = await source.ReadLineAsync(preceding.Length > 0, preceding, cts.Token);
        Assert.Equal(LineStatus.Line, status);
        return line;
    }

    [Fact]
    public async Task Up_shows_each_submission_once_and_never_its_continuation_lines()
    {
        var (source, keys) = Create(["var old = 1;"]);
        // A two-line submission, read line by line as the REPL does, then recorded whole.
        keys.Type("for (;;)").Press(ConsoleKey.Enter);
        Assert.Equal("for (;;)", await Read(source));
        keys.Type("  break;").Press(ConsoleKey.Enter);
        Assert.Equal("  break;", await Read(source, "for (;;)\n"));
        source.AddHistory("for (;;)\n  break;");
        keys.Type("x").Press(ConsoleKey.Enter);
        Assert.Equal("x", await Read(source));
        source.AddHistory("x");

        keys.Press(ConsoleKey.UpArrow).Press(ConsoleKey.Enter);
        Assert.Equal("x", await Read(source));
        keys.Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.Enter);
        Assert.Equal("for (;;)\n  break;", await Read(source));
        keys.Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.Enter);
        Assert.Equal("var old = 1;", await Read(source));
        keys.Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.Enter);
        Assert.Equal("var old = 1;", await Read(source)); // the oldest entry: Up stays there
    }

    [Fact]
    public async Task Tab_puts_in_the_hosts_candidates_one_after_another()
    {
        var asked = 0;
        var (source, keys) = Create([], (code, pos) =>
        {
            asked++;
            Assert.Equal("var n = vm.sl", code);
            return new Reply { Completions = [new() { Text = "SlotCount" }, new() { Text = "Slots" }], ReplaceStart = pos - 2, ReplaceLength = 2 };
        });
        keys.Type("var n = vm.sl").Press(ConsoleKey.Tab).Press(ConsoleKey.Enter);
        Assert.Equal("var n = vm.SlotCount", await Read(source));
        keys.Type("var n = vm.sl").Press(ConsoleKey.Tab).Press(ConsoleKey.Tab).Press(ConsoleKey.Tab).Press(ConsoleKey.Tab, shift: true).Type(";").Press(ConsoleKey.Enter);
        Assert.Equal("var n = vm.Slots;", await Read(source));
        Assert.Equal(2, asked); // once per line: Tab again cycles through what the host said
    }
}
