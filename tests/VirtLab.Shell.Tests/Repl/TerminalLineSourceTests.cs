using System.Collections.Concurrent;
using VirtLab.Shell.Repl;
using Xunit;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>The terminal line editor with scripted keys, a recording terminal and a scripted host.</summary>
public sealed class TerminalLineSourceTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private sealed class ScriptedKeys : IKeySource
    {
        private readonly BlockingCollection<ConsoleKeyInfo> _keys = new();
        public bool TryRead(TimeSpan wait, out ConsoleKeyInfo key) => _keys.TryTake(out key, wait);
        public bool KeyAvailable => _keys.Count > 0;

        public ScriptedKeys Type(string text)
        {
            foreach (var c in text) _keys.Add(new ConsoleKeyInfo(c, ConsoleKey.NoName, false, false, false));
            return this;
        }

        public ScriptedKeys Press(ConsoleKey key, bool shift = false, bool ctrl = false, bool alt = false)
        {
            var c = key switch { ConsoleKey.Enter => '\r', ConsoleKey.Tab => '\t', _ when ctrl && key is >= ConsoleKey.A and <= ConsoleKey.Z => (char)(key - ConsoleKey.A + 1), _ => '\0' };
            _keys.Add(new ConsoleKeyInfo(c, key, shift, alt, ctrl));
            return this;
        }

        public ScriptedKeys Ctrl(ConsoleKey key) => Press(key, ctrl: true);
    }

    /// <summary>A host that answers from a function (null: not ready) and counts the questions.</summary>
    private sealed class ScriptedAssist(Func<string, int, CompletionAnswer?>? complete = null, Func<string, int, Reply?>? signature = null,
        Func<string, int, Reply?>? info = null) : ICodeAssist
    {
        public int Asked;
        public CompletionAnswer? Complete(string text, int caret) { Asked++; return complete is null ? new CompletionAnswer(caret, 0, []) : complete(text, caret); }
        public Reply? Signature(string text, int caret) => signature?.Invoke(text, caret) ?? new Reply();
        public Reply? QuickInfo(string text, int caret) => info?.Invoke(text, caret) ?? new Reply();
    }

    /// <summary>What the editor drew, readable while it draws.</summary>
    private sealed class Screen
    {
        private readonly StringWriter _text = new();
        public readonly TextWriter Writer;
        public Screen() => Writer = TextWriter.Synchronized(_text);
        public override string ToString() { lock (Writer) return _text.ToString(); }

        /// <summary>Waits until the screen shows <paramref name="text"/> (the editor draws once no key is waiting).</summary>
        public void WaitFor(string text)
        {
            var deadline = DateTime.UtcNow + Timeout;
            while (!ToString().Contains(text, StringComparison.Ordinal))
            {
                if (DateTime.UtcNow > deadline) throw new Xunit.Sdk.XunitException($"the screen never showed \"{text}\":\n{this}");
                Thread.Sleep(10);
            }
        }
    }

    private static (TerminalLineSource Source, ScriptedKeys Keys, Screen Screen) Create(IEnumerable<string> history, ICodeAssist? assist = null)
    {
        var keys = new ScriptedKeys();
        var screen = new Screen();
        var source = new TerminalLineSource(new CSharpHighlighter(), assist ?? new ScriptedAssist(), history, color: false, screen.Writer, keys, () => 60);
        return (source, keys, screen);
    }

    private static Task<(LineStatus, string)> Reading(TerminalLineSource source) => source.ReadLineAsync(false, "", CancellationToken.None);

    private static async Task<(LineStatus, string)> Submitted(Task<(LineStatus, string)> read)
    {
        Assert.True(await Task.WhenAny(read, Task.Delay(Timeout)) == read, "the editor did not submit");
        return await read;
    }

    private static async Task<string> Read(TerminalLineSource source)
    {
        using var cts = new CancellationTokenSource(Timeout);
        var read = source.ReadLineAsync(false, "", cts.Token);
        Assert.True(await Task.WhenAny(read, Task.Delay(Timeout)) == read, "the editor did not submit");
        var (status, line) = await read;
        Assert.Equal(LineStatus.Line, status);
        return line;
    }

    [Fact]
    public async Task Enter_opens_a_new_line_until_the_code_is_complete_and_adds_a_missing_semicolon()
    {
        var (source, keys, _) = Create([]);
        keys.Type("for (var i = 0; i < 2; i++)").Press(ConsoleKey.Enter).Type("{").Press(ConsoleKey.Enter).Type("i++;").Press(ConsoleKey.Enter).Type("}").Press(ConsoleKey.Enter);
        Assert.Equal("for (var i = 0; i < 2; i++)\n{\n    i++;\n    }", await Read(source)); // the new line keeps the indentation
        keys.Type("var y = 5").Press(ConsoleKey.Enter);
        Assert.Equal("var y = 5;", await Read(source));
        keys.Type("var s = \"open").Press(ConsoleKey.Enter).Press(ConsoleKey.Enter).Press(ConsoleKey.Enter);
        Assert.Equal("var s = \"open", await Read(source)); // two empty lines submit what never completes
    }

    [Fact]
    public async Task A_recalled_multi_line_entry_is_editable_on_every_line()
    {
        var (source, keys, _) = Create(["var a = 1;", "if (a > 0)\n{\n    a = 2;\n}"]);
        // Up recalls the entry with the caret at its end; Up again moves into its lines (not to the older entry).
        keys.Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow)                                 // to "    a = 2;"
            .Ctrl(ConsoleKey.E).Press(ConsoleKey.Backspace).Press(ConsoleKey.Backspace).Type("3;")  // a = 3;
            .Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Ctrl(ConsoleKey.E)
            .Press(ConsoleKey.Backspace).Press(ConsoleKey.Backspace).Type("1)")                     // a > 1)
            .Press(ConsoleKey.Enter);
        Assert.Equal("if (a > 1)\n{\n    a = 3;\n}", await Read(source));
    }

    [Fact]
    public async Task Emacs_keys_edit_the_line()
    {
        var (source, keys, _) = Create([]);
        keys.Type("world").Ctrl(ConsoleKey.A).Type("hello ").Ctrl(ConsoleKey.E).Type(" again").Ctrl(ConsoleKey.W).Ctrl(ConsoleKey.W)
            .Type("x;").Press(ConsoleKey.Enter);
        Assert.Equal("hello x;", await Read(source));
        keys.Type("abc def").Press(ConsoleKey.LeftArrow).Press(ConsoleKey.LeftArrow).Ctrl(ConsoleKey.K).Ctrl(ConsoleKey.U).Type("z").Press(ConsoleKey.Enter);
        Assert.Equal("z", await Read(source)); // Ctrl+K cut "ef", Ctrl+U "abc d"
    }

    [Fact]
    public async Task Reverse_search_finds_older_entries_and_history_has_no_consecutive_duplicates()
    {
        var (source, keys, _) = Create(["var memory = 4.GiB();", "vm.Run(w)", "vm.Run(w)", "var memo = 1;", "Console.WriteLine()"]);
        keys.Ctrl(ConsoleKey.R).Type("memo").Press(ConsoleKey.Enter);
        Assert.Equal("var memo = 1;", await Read(source));
        keys.Ctrl(ConsoleKey.R).Type("memo").Ctrl(ConsoleKey.R).Press(ConsoleKey.Enter);
        Assert.Equal("var memory = 4.GiB();", await Read(source)); // Ctrl+R again: the next older match
        keys.Type("draft").Ctrl(ConsoleKey.R).Type("nothing like it").Press(ConsoleKey.Escape).Press(ConsoleKey.Enter);
        Assert.Equal("draft", await Read(source)); // Esc gives the line back

        source.AddHistory("x");
        source.AddHistory("x");
        keys.Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.UpArrow).Press(ConsoleKey.Enter);
        Assert.Equal("vm.Run(w)", await Read(source)); // x, Console.WriteLine(), var memo = 1;, vm.Run(w): repeats once
    }

    [Fact]
    public async Task Tab_opens_a_menu_Enter_takes_the_selected_item_and_a_named_argument_goes_in_with_its_colon()
    {
        var assist = new ScriptedAssist(complete: (text, caret) =>
        {
            var start = caret;
            while (start > 0 && char.IsLetter(text[start - 1])) start--;
            var typed = text[start..caret];
            var all = new[] { ("passes:", "Parameter"), ("slot:", "Parameter"), ("stride:", "Parameter"), ("Slots", "Property"), ("SlotCount", "Property") };
            var items = all.Where(a => a.Item1.StartsWith(typed, StringComparison.OrdinalIgnoreCase))
                .Select(a => new CompletionEntry { Text = a.Item1, Kind = a.Item2, Detail = a.Item1 == "passes:" ? "int passes = 1" : "", Doc = "how many times" }).ToList();
            return new CompletionAnswer(start, typed.Length, items);
        });
        var (source, keys, screen) = Create([], assist);
        keys.Type("Workload.Write(pa").Press(ConsoleKey.Tab); // one candidate: in at once
        keys.Type(" 3)").Press(ConsoleKey.Enter);
        Assert.Equal("Workload.Write(passes: 3)", await Read(source));

        // "." opens the menu by itself; typing narrows it (slot:, Slots, SlotCount); Down, Enter takes the second.
        var read = Reading(source);
        keys.Type("vm.sl");
        screen.WaitFor("› v slot:");                      // the menu under the input, the selected row marked
        Assert.Contains("  p Slots", screen.ToString());
        keys.Press(ConsoleKey.DownArrow);
        screen.WaitFor("› p Slots");
        keys.Press(ConsoleKey.Enter).Type(";").Press(ConsoleKey.Enter);
        Assert.Equal((LineStatus.Line, "vm.Slots;"), await read);

        keys.Type("vm.Slot").Press(ConsoleKey.DownArrow).Type(".").Press(ConsoleKey.Escape).Press(ConsoleKey.Backspace).Type(";").Press(ConsoleKey.Enter);
        Assert.Equal("vm.Slots;", await Read(source)); // "." commits the selection (then opens a new menu: Esc)
    }

    [Fact]
    public async Task Signature_help_and_quick_info_show_under_the_input()
    {
        var assist = new ScriptedAssist(
            signature: (text, caret) => new Reply
            {
                Signatures = ["Workload Workload.Write(int slot = 1, long stride = 4096, long offset = 0, int passes = 1)"],
                ActiveSignature = 0, Parameter = text.Contains(',') ? "stride" : "slot", ParameterDoc = "the parameter's doc",
            },
            info: (_, _) => new Reply { Info = "class Vm\nA virtual machine." });
        var (source, keys, screen) = Create([], assist);
        var read = Reading(source);
        keys.Type("Workload.Write(1, ");
        screen.WaitFor("Workload Workload.Write(int slot = 1, long stride = 4096");
        screen.WaitFor("stride: the parameter's doc");
        keys.Press(ConsoleKey.F1);
        screen.WaitFor("A virtual machine.");
        keys.Type("2)").Press(ConsoleKey.Enter);
        Assert.Equal((LineStatus.Line, "Workload.Write(1, 2)"), await read);
    }

    [Fact]
    public async Task A_Tab_before_the_host_is_ready_says_warming_and_answers_when_it_is()
    {
        var ready = false;
        var assist = new ScriptedAssist(complete: (text, caret) => ready
            ? new CompletionAnswer(caret - 2, 2, [new CompletionEntry { Text = "Length", Kind = "Property" }])
            : null);
        var (source, keys, screen) = Create([], assist);
        var read = source.ReadLineAsync(false, "", CancellationToken.None);
        keys.Type("s.Le").Press(ConsoleKey.Tab);
        var deadline = DateTime.UtcNow + Timeout;
        while (!screen.ToString().Contains("warming up") && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.Contains("warming up", screen.ToString());
        var asked = assist.Asked;
        ready = true; // the editor asks again while idle, and the single candidate goes in
        while (assist.Asked == asked && DateTime.UtcNow < deadline) await Task.Delay(20);
        screen.WaitFor("> s.Length");   // the answer comes on the editor's asking thread and is drawn when it does
        keys.Press(ConsoleKey.Enter);
        Assert.Equal((LineStatus.Line, "s.Length"), await read);
    }

    [Fact]
    public async Task A_dot_does_not_hold_up_typing_and_the_menu_shows_for_the_text_as_it_is_when_the_answer_comes()
    {
        // A host that answers only when the test lets it: every key typed meanwhile must reach the screen.
        using var gate = new ManualResetEventSlim(false);
        var asked = new ConcurrentQueue<string>();
        var assist = new ScriptedAssist(complete: (text, caret) =>
        {
            asked.Enqueue(text);
            gate.Wait(Timeout);
            var start = text.LastIndexOf('.') + 1;
            var typed = text[start..caret];
            var items = new[] { "Size", "SizeOf", "Slots" }.Where(n => n.StartsWith(typed, StringComparison.OrdinalIgnoreCase))
                .Select(n => new CompletionEntry { Text = n, Kind = "Property" }).ToList();
            return new CompletionAnswer(start, typed.Length, items);
        });
        var (source, keys, screen) = Create([], assist);
        var read = Reading(source);
        keys.Type("vm.");
        while (asked.IsEmpty) await Task.Delay(10);       // the host is asked about "vm." and does not answer
        keys.Type("Siz");
        screen.WaitFor("> vm.Siz");                       // typed on while the question is open
        gate.Set();
        screen.WaitFor("› p Size ");                      // the menu for "vm.Siz": the answer about "vm." is not shown
        Assert.DoesNotContain("Slots", screen.ToString());
        keys.Type("e;").Press(ConsoleKey.Enter);          // ";" commits the selected "Size" (the text already)
        Assert.Equal((LineStatus.Line, "vm.Size;"), await Submitted(read));
        Assert.Contains("vm.Siz", asked);
    }

    [Fact]
    public async Task Wide_characters_take_two_columns_for_the_caret_and_for_wrapping_and_combining_marks_none()
    {
        var (source, keys, screen) = Create([]);
        var read = Reading(source);
        keys.Type("var s = \"日本語\";");
        // The caret after the line: prompt (2) + 9 + 6 (three wide characters) + 2 columns.
        screen.WaitFor("\r\u001b[19C\u001b[?25h");
        keys.Press(ConsoleKey.LeftArrow).Press(ConsoleKey.LeftArrow).Press(ConsoleKey.LeftArrow).Type("人");
        screen.WaitFor("日本人語");
        screen.WaitFor("\r\u001b[17C\u001b[?25h");       // after 人: 2 + 9 + 6
        keys.Ctrl(ConsoleKey.E).Ctrl(ConsoleKey.U).Type("e\u0301x"); // e + combining acute: one column
        screen.WaitFor("\r\u001b[4C\u001b[?25h");
        keys.Press(ConsoleKey.LeftArrow).Press(ConsoleKey.LeftArrow).Press(ConsoleKey.Backspace); // Left twice: before "é"; nothing before it
        keys.Press(ConsoleKey.Delete).Press(ConsoleKey.Enter);                                       // Delete takes é whole
        Assert.Equal((LineStatus.Line, "x"), await Submitted(read));

        // 60 columns: 58 for text, so 29 wide characters to a row; the 30th starts the next.
        var wide = new string('字', 40);
        keys.Type("\"" + wide + "\"").Press(ConsoleKey.Enter);
        Assert.Equal("\"" + wide + "\"", await Read(source));
        Assert.Contains("\"" + wide[..28] + "\r\n  " + wide[28..] + "\"", screen.ToString());
    }

    [Fact]
    public async Task Keys_typed_before_the_prompt_are_kept_in_order_with_their_Enter()
    {
        var (source, keys, screen) = Create([]);
        // Typed while the previous submission ran: queued, then read as if typed at the prompt; a LF (typed while
        // the terminal was still in line mode) is an Enter too.
        keys.Type("1 + 1").Press(ConsoleKey.Enter).Type("2 + 2\n");
        Assert.Equal("1 + 1", await Read(source));
        Assert.Equal("2 + 2", await Read(source));
        Assert.DoesNotContain("\u001b[33m", screen.ToString()); // color: false draws no colour
        Assert.DoesNotContain("\u001b[0;", screen.ToString());
    }

    [Fact]
    public async Task A_line_longer_than_the_terminal_wraps_and_stays_whole_in_the_transcript()
    {
        var (source, keys, screen) = Create([]);
        var longLine = "var text = \"" + new string('x', 100) + "\";";
        keys.Type(longLine).Press(ConsoleKey.Enter);
        Assert.Equal(longLine, await Read(source));
        // 60 columns: two for the prompt, 58 of text per row.
        var all = screen.ToString();
        Assert.Contains(longLine[..58] + "\r\n  " + longLine[58..], all);
    }
}
