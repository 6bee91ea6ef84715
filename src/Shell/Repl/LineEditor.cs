using System.Collections.Concurrent;
using System.Text;

namespace VirtLab.Shell.Repl;

/// <summary>Where the editor's keys come from: the terminal (<see cref="ConsoleKeys"/>) or a test's script.</summary>
internal interface IKeySource
{
    /// <summary>The next key, waiting at most <paramref name="wait"/>; false if none came.</summary>
    bool TryRead(TimeSpan wait, out ConsoleKeyInfo key);

    /// <summary>Keys are waiting (typed ahead or pasted): the editor asks the host and redraws once they are in.</summary>
    bool KeyAvailable { get; }
}

/// <summary>
/// The terminal's keys, read by one thread from the start of the session to its end. .NET turns the terminal's echo
/// and line buffering off only while a read is pending, so a reader that is always waiting keeps what is typed ahead
/// (before the first prompt, during an evaluation) off the screen and in order, Enter included, until the editor
/// takes it.
/// </summary>
internal sealed class ConsoleKeys : IKeySource
{
    private readonly BlockingCollection<ConsoleKeyInfo> _keys = new();

    public ConsoleKeys()
    {
        var reader = new Thread(() =>
        {
            try { while (true) _keys.Add(Console.ReadKey(intercept: true)); }
            catch (InvalidOperationException) { _keys.CompleteAdding(); } // stdin closed
        }) { IsBackground = true, Name = "virtlab-keys" };
        reader.Start();
    }

    public bool TryRead(TimeSpan wait, out ConsoleKeyInfo key) => _keys.TryTake(out key, wait);
    public bool KeyAvailable => _keys.Count > 0;
}

/// <summary>What the editor asks the evaluation host; null answers mean the host cannot answer yet (starting, busy).</summary>
internal interface ICodeAssist
{
    CompletionAnswer? Complete(string text, int caret);
    Reply? Signature(string text, int caret);
    Reply? QuickInfo(string text, int caret);
}

internal sealed record CompletionAnswer(int Start, int Length, IReadOnlyList<CompletionEntry> Items);

/// <summary>
/// The REPL's line editor: the whole submission is one buffer of lines, every line editable (a recalled multi-line
/// entry too); Enter submits when the code is complete (or complete but for its final semicolon, which it adds) and
/// opens a new line otherwise. Completion shows a menu under the input with each item's signature and doc; signature
/// help shows the call being typed; F1 shows quick info for the symbol at the caret. Emacs keys (Ctrl+A/E/U/K/W/L/R),
/// history without consecutive duplicates. Long lines wrap (the transcript keeps all of a submitted line).
/// It redraws everything below the prompt on each key: simple, and right however lines wrap.
/// </summary>
internal sealed class LineEditor
{
    private const int MenuRows = 8;
    private static readonly TimeSpan Idle = TimeSpan.FromMilliseconds(100);

    private readonly TextWriter _out;
    private readonly Func<int> _width;
    private readonly CSharpHighlighter _highlighter;
    private readonly ICodeAssist _assist;
    private readonly IKeySource _keys;
    private readonly Func<string, string?> _submission;
    private readonly bool _color;
    private readonly object _screen = new();   // the editor and notices from other threads write in turn
    private readonly List<string> _history = [];

    private string _text = "";
    private int _caret;
    private int _cursorRow;                     // rows from the top of the drawing to the terminal cursor
    private bool _drawn;

    private CompletionAnswer? _menu;
    private int _selected;
    private bool _completionPending;            // asked while the host was not ready: answer when it is
    private bool _menuStale, _signatureStale;   // to ask again once no more keys are waiting
    private bool _signaturePending, _infoPending; // asked while the host could not answer: ask again while idle
    private Reply? _signature;
    private string? _info;
    private string? _status;
    private Search? _search;
    private int _historyIndex;                  // == _history.Count: the draft
    private string _draft = "";

    private sealed class Search
    {
        public string Query = "";
        public int Index;                       // the history entry shown
        public string Original = "";
        public int OriginalCaret;
        public bool Failed;
    }

    public LineEditor(TextWriter output, Func<int> width, CSharpHighlighter highlighter, ICodeAssist assist, IKeySource keys,
        Func<string, string?> submission, bool color, IEnumerable<string> history)
    {
        _out = output;
        _width = width;
        _highlighter = highlighter;
        _assist = assist;
        _keys = keys;
        _submission = submission;
        _color = color;
        foreach (var entry in history) AddHistory(entry);
    }

    public bool IsReading { get; private set; }

    /// <summary>Entries as Up shows them, oldest first.</summary>
    public IReadOnlyList<string> History => _history;

    public void AddHistory(string entry)
    {
        if (string.IsNullOrWhiteSpace(entry) || _history.Count > 0 && _history[^1] == entry) return;
        _history.Add(entry);
    }

    public enum Outcome { Submit, EndOfInput, Interrupted }

    /// <summary>Reads one submission. Interrupted (with the text being edited) when <paramref name="interrupt"/> fires.</summary>
    public (Outcome, string) Read(CancellationToken interrupt)
    {
        lock (_screen)
        {
            _text = "";
            _caret = 0;
            _cursorRow = 0;
            _historyIndex = _history.Count;
            _draft = "";
            _menu = null;
            _signature = null;
            _info = null;
            _status = null;
            _search = null;
            _completionPending = _signaturePending = _infoPending = false;
            IsReading = true;
            Draw();
        }
        try
        {
            while (true)
            {
                if (interrupt.IsCancellationRequested)
                    lock (_screen) { Finish(); return (Outcome.Interrupted, _text); }
                if (!_keys.TryRead(Idle, out var key))
                {
                    if (_completionPending || _signaturePending || _infoPending)
                        lock (_screen)
                        {
                            if (_completionPending) Complete(explicitly: true);
                            if (_signaturePending) Signature();
                            if (_infoPending) QuickInfo();
                            Draw();
                        }
                    continue;
                }
                lock (_screen)
                {
                    var outcome = Handle(key);
                    if (outcome is { } done)
                    {
                        Finish();
                        return (done, done == Outcome.Submit ? _text : "");
                    }
                    if (!_keys.KeyAvailable)
                    {
                        Refresh();
                        Draw();
                    }
                }
            }
        }
        finally { IsReading = false; }
    }

    /// <summary>A line of its own above the input (a restart notice) without garbling what is being typed.</summary>
    public void Notice(string text)
    {
        lock (_screen)
        {
            if (!IsReading || !_drawn)
            {
                _out.Write(text + "\n");
                _out.Flush();
                return;
            }
            var sb = new StringBuilder();
            MoveToTop(sb);
            sb.Append(text.Replace("\n", "\r\n")).Append("\r\n");
            _cursorRow = 0;
            _out.Write(sb.ToString());
            Draw();
        }
    }

    // ---- keys ----------------------------------------------------------------------------------------

    private Outcome? Handle(ConsoleKeyInfo key)
    {
        var ctrl = (key.Modifiers & ConsoleModifiers.Control) != 0;
        var alt = (key.Modifiers & ConsoleModifiers.Alt) != 0;
        var ch = key.KeyChar;
        _info = null;
        _infoPending = false;
        _status = null;

        if (_search is not null && HandleSearch(key, ctrl)) return null;

        // Enter: the terminal sends CR, or LF when it was typed before the terminal left line mode.
        if (key.Key == ConsoleKey.Enter || ch is '\r' or '\n')
        {
            // With the menu up Enter takes the selected item, unless that is what is typed already: then it submits.
            if (_menuStale) Complete(explicitly: false);
            if (_menu is { Items.Count: > 0 } menu && !IsTyped(menu)) { Accept(); return null; }
            CloseMenu();
            if (alt) { InsertNewLine(); return null; }
            if (_submission(_text) is { } submitted)
            {
                _text = submitted;
                _caret = _text.Length;
                return Outcome.Submit;
            }
            InsertNewLine();
            return null;
        }

        if (ctrl && !alt)
        {
            switch (key.Key)
            {
                case ConsoleKey.A: CloseMenu(); _caret = LineStart(_caret); return null;
                case ConsoleKey.E: CloseMenu(); _caret = LineEnd(_caret); return null;
                case ConsoleKey.U: CloseMenu(); Delete(LineStart(_caret), _caret); return null;
                case ConsoleKey.K: CloseMenu(); Delete(_caret, LineEnd(_caret)); return null;
                case ConsoleKey.W: CloseMenu(); Delete(WordStart(_caret), _caret); return null;
                case ConsoleKey.L:
                    _out.Write("\u001b[2J\u001b[H");
                    _cursorRow = 0;
                    return null;
                case ConsoleKey.R: StartSearch(); return null;
                case ConsoleKey.D:
                    if (_text.Length == 0) return Outcome.EndOfInput;
                    Delete(_caret, Math.Min(_text.Length, _caret + 1));
                    return null;
                case ConsoleKey.LeftArrow: CloseMenu(); _caret = WordStart(_caret); return null;
                case ConsoleKey.RightArrow: CloseMenu(); _caret = WordEnd(_caret); return null;
                case ConsoleKey.H: Backspace(); return null;
                case ConsoleKey.Spacebar: Complete(explicitly: true); return null;
            }
        }
        if (alt && key.Key == ConsoleKey.B) { _caret = WordStart(_caret); return null; }
        if (alt && key.Key == ConsoleKey.F) { _caret = WordEnd(_caret); return null; }

        switch (key.Key)
        {
            case ConsoleKey.Tab:
                // With the menu up, Tab takes the selected item (Up/Down choose); else it asks for completions.
                if (_menuStale || _menu is not { Items.Count: > 0 }) Complete(explicitly: true);
                else if ((key.Modifiers & ConsoleModifiers.Shift) != 0) Select(-1);
                else Accept();
                return null;
            case ConsoleKey.Escape:
                CloseMenu();
                _signature = null;
                _completionPending = _signaturePending = false;
                return null;
            case ConsoleKey.F1:
                QuickInfo();
                return null;
            case ConsoleKey.UpArrow:
                if (_menu is not null) Select(-1);
                else if (LineStart(_caret) > 0) _caret = VerticalMove(-1);
                else Recall(-1);
                return null;
            case ConsoleKey.DownArrow:
                if (_menu is not null) Select(1);
                else if (LineEnd(_caret) < _text.Length) _caret = VerticalMove(1);
                else Recall(1);
                return null;
            case ConsoleKey.PageUp: if (_menu is not null) Select(-MenuRows); return null;
            case ConsoleKey.PageDown: if (_menu is not null) Select(MenuRows); return null;
            case ConsoleKey.LeftArrow: CloseMenu(); _caret = Math.Max(0, _caret - 1); return null;
            case ConsoleKey.RightArrow: CloseMenu(); _caret = Math.Min(_text.Length, _caret + 1); return null;
            case ConsoleKey.Home: CloseMenu(); _caret = LineStart(_caret); return null;
            case ConsoleKey.End: CloseMenu(); _caret = LineEnd(_caret); return null;
            case ConsoleKey.Backspace: Backspace(); return null;
            case ConsoleKey.Delete: Delete(_caret, Math.Min(_text.Length, _caret + 1)); return null;
        }

        if (ch != '\0' && !char.IsControl(ch)) Type(ch);
        return null;
    }

    private void Type(char ch)
    {
        var identifier = char.IsLetterOrDigit(ch) || ch == '_';
        // A character that cannot continue the name commits the selected item first (as "Con" Tab "." gives "Console.").
        if (_menu is not null && !identifier) Accept();
        Insert(ch.ToString());
        if (identifier)
        {
            if (_menu is not null) _menuStale = true;
        }
        else if (ch == '.') { _menu = new CompletionAnswer(_caret, 0, []); _menuStale = true; }
        if (ch is '(' or ',' or '[' || ch is ')' or ']' && _signature is not null) _signatureStale = true;
    }

    private void Backspace()
    {
        if (_caret == 0) return;
        // An indentation of spaces goes back four at a time.
        var start = LineStart(_caret);
        var n = _text[start.._caret].Length > 0 && _text[start.._caret].All(c => c == ' ') ? Math.Min(4, _caret - start) : 1;
        Delete(_caret - n, _caret);
        if (_menu is not null)
        {
            if (_caret < _menu.Start) CloseMenu();
            else _menuStale = true;
        }
    }

    private void InsertNewLine()
    {
        CloseMenu();
        _signature = null;
        _signaturePending = false;
        var line = _text[LineStart(_caret).._caret];
        var indent = line[..(line.Length - line.TrimStart(' ').Length)];
        if (line.TrimEnd().EndsWith('{')) indent += "    ";
        Insert("\n" + indent);
    }

    // ---- text ----------------------------------------------------------------------------------------

    private void Insert(string s)
    {
        _text = _text[.._caret] + s + _text[_caret..];
        _caret += s.Length;
        _historyIndex = _history.Count; // an edited entry is a new draft
    }

    private void Delete(int from, int to)
    {
        if (to <= from) return;
        _text = _text[..from] + _text[to..];
        _caret = from;
        _historyIndex = _history.Count;
    }

    private int LineStart(int at) => at == 0 ? 0 : _text.LastIndexOf('\n', at - 1) + 1;

    private int LineEnd(int at)
    {
        var nl = _text.IndexOf('\n', at);
        return nl < 0 ? _text.Length : nl;
    }

    private int WordStart(int at)
    {
        while (at > 0 && char.IsWhiteSpace(_text[at - 1])) at--;
        if (at > 0 && !IsWord(_text[at - 1])) return at - 1;
        while (at > 0 && IsWord(_text[at - 1])) at--;
        return at;
    }

    private int WordEnd(int at)
    {
        while (at < _text.Length && !IsWord(_text[at])) at++;
        while (at < _text.Length && IsWord(_text[at])) at++;
        return at;
    }

    private static bool IsWord(char c) => char.IsLetterOrDigit(c) || c == '_';

    private int VerticalMove(int direction)
    {
        var start = LineStart(_caret);
        var column = _caret - start;
        var target = direction < 0 ? LineStart(start - 1) : LineEnd(_caret) + 1;
        return Math.Min(target + column, LineEnd(target));
    }

    // ---- history and reverse search --------------------------------------------------------------------

    private void Recall(int direction)
    {
        var next = _historyIndex + direction;
        if (next < 0 || next > _history.Count) return;
        if (_historyIndex == _history.Count) _draft = _text;
        _historyIndex = next;
        _text = next == _history.Count ? _draft : _history[next];
        _caret = _text.Length;
        _signature = null;
    }

    private void StartSearch()
    {
        CloseMenu();
        _signature = null;
        _search = new Search { Index = _history.Count, Original = _text, OriginalCaret = _caret };
    }

    /// <summary>Ctrl+R mode: typing narrows, Ctrl+R finds the next older match, Escape/Ctrl+G gives the line back;
    /// any other key leaves the mode with the match in the buffer and is handled as usual (Enter submits it).</summary>
    private bool HandleSearch(ConsoleKeyInfo key, bool ctrl)
    {
        var s = _search!;
        if (ctrl && key.Key == ConsoleKey.R) { Find(s, s.Index - 1); return true; }
        if (key.Key == ConsoleKey.Escape || ctrl && key.Key == ConsoleKey.G)
        {
            _text = s.Original;
            _caret = s.OriginalCaret;
            _search = null;
            return true;
        }
        if (key.Key == ConsoleKey.Backspace)
        {
            if (s.Query.Length > 0) s.Query = s.Query[..^1];
            Find(s, Math.Min(_history.Count - 1, s.Index == _history.Count ? s.Index - 1 : s.Index), keepOnFailure: false);
            return true;
        }
        if (!ctrl && key.KeyChar != '\0' && !char.IsControl(key.KeyChar))
        {
            s.Query += key.KeyChar;
            Find(s, s.Index == _history.Count ? s.Index - 1 : s.Index);
            return true;
        }
        _search = null; // leave the mode; the key does its usual thing
        _historyIndex = _history.Count;
        return false;
    }

    private void Find(Search s, int from, bool keepOnFailure = true)
    {
        for (var i = from; i >= 0; i--)
        {
            var at = s.Query.Length == 0 ? -1 : _history[i].IndexOf(s.Query, StringComparison.OrdinalIgnoreCase);
            if (at < 0) continue;
            s.Index = i;
            s.Failed = false;
            _text = _history[i];
            _caret = at;
            return;
        }
        s.Failed = s.Query.Length > 0;
        if (!keepOnFailure) { _text = s.Original; _caret = s.OriginalCaret; s.Index = _history.Count; }
    }

    // ---- completion, signature help, quick info ----------------------------------------------------------

    /// <summary>Asks what typing made stale (once the keys typed ahead are in: a paste asks once, not per character).</summary>
    private void Refresh()
    {
        if (_menuStale) Complete(explicitly: false);
        if (_signatureStale) Signature();
    }

    private void Complete(bool explicitly)
    {
        _menuStale = false;
        _completionPending = false;
        var answer = _assist.Complete(_text, _caret);
        if (answer is null)
        {
            if (explicitly)
            {
                // The host is still starting (or busy): say so, and answer as soon as it can.
                _completionPending = true;
                _status = "warming up: completion answers as soon as the evaluation host is ready (Esc: never mind)";
            }
            else CloseMenu();
            return;
        }
        if (answer.Items.Count == 0)
        {
            CloseMenu();
            if (explicitly) _status = "no completions here";
            return;
        }
        var keep = _menu is not null && _selected < _menu.Items.Count ? _menu.Items[_selected].Text : null;
        _menu = answer;
        var index = keep is null ? -1 : answer.Items.ToList().FindIndex(i => i.Text == keep);
        _selected = Math.Max(0, index);
        // One candidate for an explicit Tab: put it in at once.
        if (explicitly && answer.Items.Count == 1) Accept();
    }

    private void Select(int delta)
    {
        if (_menuStale) Complete(explicitly: false);
        if (_menu is not { Items.Count: > 0 }) return;
        var n = _menu.Items.Count;
        _selected = ((_selected + delta) % n + n) % n;
    }

    private void Accept()
    {
        if (_menuStale) Complete(explicitly: false);
        if (_menu is not { Items.Count: > 0 } menu) { _menu = null; return; }
        var item = menu.Items[_selected];
        var end = Math.Min(_text.Length, menu.Start + menu.Length);
        if (menu.Start <= _text.Length && menu.Start <= end)
        {
            _text = _text[..menu.Start] + item.Text + _text[end..];
            _caret = menu.Start + item.Text.Length;
            _historyIndex = _history.Count;
        }
        _menu = null;
    }

    private void CloseMenu()
    {
        _menu = null;
        _menuStale = false;
    }

    private bool IsTyped(CompletionAnswer menu) =>
        menu.Start + menu.Length <= _text.Length && _text.Substring(menu.Start, menu.Length) == menu.Items[_selected].Text;

    private void Signature()
    {
        _signatureStale = false;
        var reply = _assist.Signature(_text, _caret);
        _signaturePending = reply is null; // the host is busy or starting: ask again while idle
        if (reply is not null) _signature = reply.Signatures is { Count: > 0 } ? reply : null;
    }

    private void QuickInfo()
    {
        CloseMenu();
        var reply = _assist.QuickInfo(_text, _caret);
        _infoPending = reply is null;
        _info = reply is null ? "warming up: quick info answers as soon as the evaluation host is ready"
            : reply.Info ?? "nothing known at the caret";
    }

    // ---- drawing -------------------------------------------------------------------------------------

    private void Finish()
    {
        // The submitted text stays on screen whole (wrapped), without menus, and the next output starts below it.
        _menu = null;
        _signature = null;
        _info = null;
        _status = null;
        _search = null;
        _caret = _text.Length;
        Draw();
        _out.Write("\r\n");
        _out.Flush();
        _drawn = false;
        _cursorRow = 0;
    }

    private void MoveToTop(StringBuilder sb)
    {
        if (_drawn && _cursorRow > 0) sb.Append("\u001b[").Append(_cursorRow).Append('A');
        sb.Append('\r').Append("\u001b[J");
    }

    private void Draw()
    {
        var width = Math.Max(20, _width());
        var room = width - 2; // every row starts with a two-column prompt or indent
        var sb = new StringBuilder();
        sb.Append("\u001b[?25l");
        MoveToTop(sb);

        var kinds = _color ? _highlighter.Classify(_text) : null;
        int row = 0, caretRow = 0, caretCol = 2, offset = 0;
        var lines = _text.Split('\n');
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            var rows = line.Length / room + 1;
            for (var r = 0; r < rows; r++)
            {
                if (row > 0) sb.Append("\r\n");
                var prompt = r > 0 ? "  " : i == 0 ? (_search is null ? "> " : "? ") : ". ";
                sb.Append(_color ? (i == 0 && r == 0 ? "\u001b[33m" : "\u001b[90m") + prompt + "\u001b[0m" : prompt);
                var from = r * room;
                var to = Math.Min(line.Length, from + room);
                AppendColored(sb, line, from, to, kinds, offset);
                row++;
            }
            if (_caret >= offset && _caret <= offset + line.Length)
            {
                var col = _caret - offset;
                caretRow = row - rows + col / room;
                caretCol = 2 + col % room;
            }
            offset += line.Length + 1;
        }

        foreach (var panel in Panel(width))
        {
            sb.Append("\r\n").Append(panel);
            row++;
        }
        // Back up to the caret.
        var up = row - 1 - caretRow;
        if (up > 0) sb.Append("\u001b[").Append(up).Append('A');
        sb.Append('\r');
        if (caretCol > 0) sb.Append("\u001b[").Append(caretCol).Append('C');
        sb.Append("\u001b[?25h");
        _cursorRow = caretRow;
        _drawn = true;
        _out.Write(sb.ToString());
        _out.Flush();
    }

    private void AppendColored(StringBuilder sb, string line, int from, int to, CSharpHighlighter.Kind[]? kinds, int offset)
    {
        if (kinds is null) { sb.Append(line, from, to - from); return; }
        string? current = null;
        for (var i = from; i < to; i++)
        {
            var at = offset + i;
            var sgr = at < kinds.Length ? CSharpHighlighter.Sgr(kinds[at]) : null;
            if (sgr != current)
            {
                sb.Append(sgr is null ? "\u001b[0m" : "\u001b[0;" + sgr + "m");
                current = sgr;
            }
            sb.Append(line[i]);
        }
        if (current is not null) sb.Append("\u001b[0m");
    }

    /// <summary>The lines under the input: search, menu, signature, quick info, status (each fitted to the width).</summary>
    private IEnumerable<string> Panel(int width)
    {
        var fit = width - 1;
        if (_search is { } s)
            yield return Fit($"({(s.Failed ? "failing " : "")}reverse-i-search)`{s.Query}': Enter runs it, Esc gives the line back", fit, grey: true);
        if (_menu is { Items.Count: > 0 } menu)
        {
            var first = Math.Clamp(_selected - MenuRows / 2, 0, Math.Max(0, menu.Items.Count - MenuRows));
            var shown = menu.Items.Skip(first).Take(MenuRows).ToList();
            var nameWidth = Math.Min(32, shown.Max(i => (i.Display ?? i.Text).Length));
            for (var k = 0; k < shown.Count; k++)
            {
                var item = shown[k];
                var selected = first + k == _selected;
                var name = (item.Display ?? item.Text).PadRight(nameWidth);
                var kind = Abbreviation(item.Kind);
                var line = $"{(selected ? "›" : " ")} {kind} {name}  {item.Detail}";
                line = line.Length > fit ? line[..(fit - 1)] + "…" : line;
                yield return _color ? (selected ? "\u001b[7m" + line + "\u001b[0m" : line) : line;
            }
            var more = menu.Items.Count - shown.Count;
            var doc = menu.Items[_selected].Doc;
            var footer = (more > 0 ? $"({_selected + 1}/{menu.Items.Count}) " : "") + (doc ?? "");
            if (footer.Length > 0) yield return Fit(footer, fit, grey: true);
        }
        else if (_signature is { Signatures: { Count: > 0 } signatures } sig)
        {
            var active = Math.Clamp(sig.ActiveSignature, 0, signatures.Count - 1);
            var text = signatures[active] + (signatures.Count > 1 ? $"  ({active + 1} of {signatures.Count} overloads)" : "");
            yield return Fit(text, fit, grey: false, emphasize: sig.Parameter);
            // The argument being typed and its doc (the method's summary where the parameter has none).
            var doc = !string.IsNullOrEmpty(sig.ParameterDoc) ? sig.ParameterDoc : sig.Doc ?? "";
            if (!string.IsNullOrEmpty(sig.Parameter)) yield return Fit($"{sig.Parameter}: {doc}", fit, grey: true);
            else if (doc.Length > 0) yield return Fit(doc, fit, grey: true);
        }
        if (_info is { } info)
            foreach (var line in info.Split('\n').Take(6)) yield return Fit(line, fit, grey: false);
        if (_status is { } status) yield return Fit(status, fit, grey: true);
    }

    private string Fit(string text, int width, bool grey, string? emphasize = null)
    {
        text = text.ReplaceLineEndings(" ");
        if (text.Length > width) text = text[..(width - 1)] + "…";
        if (!_color) return text;
        if (emphasize is not null)
        {
            // The parameter being typed, bold: "int passes = 1" in "Write(int slot = 1, …, int passes = 1)".
            var open = text.IndexOf('(');
            var at = open < 0 ? -1 : FindParameter(text, emphasize, open);
            if (at >= 0)
            {
                var end = text.IndexOfAny([',', ')'], at);
                if (end < 0) end = text.Length;
                return text[..at] + "\u001b[1;4m" + text[at..end] + "\u001b[0m" + text[end..];
            }
        }
        return grey ? "\u001b[90m" + text + "\u001b[0m" : text;
    }

    private static int FindParameter(string signature, string name, int open)
    {
        // The parameter's slot starts after "(" or ", "; its name is the word after the type.
        var start = open + 1;
        while (start < signature.Length)
        {
            var end = signature.IndexOfAny([',', ')'], start);
            if (end < 0) end = signature.Length;
            var slot = signature[start..end];
            var words = slot.Split([' ', '='], StringSplitOptions.RemoveEmptyEntries);
            if (words.Length >= 2 && words[1].Trim('[', ']') == name) return start + (slot.Length - slot.TrimStart().Length);
            start = end + 1;
            while (start < signature.Length && signature[start] == ' ') start++;
        }
        return -1;
    }

    private static string Abbreviation(string kind) => kind switch
    {
        "Method" => "ƒ",
        "ExtensionMethod" => "ƒ",
        "Property" => "p",
        "Field" => "f",
        "Variable" => "v",
        "Local" => "v",
        "Parameter" => "v",
        "Global" => "g",
        "Type" => "T",
        "Namespace" => "n",
        "Keyword" => "k",
        "EnumMember" => "e",
        "Event" => "ε",
        _ => "·",
    };
}
