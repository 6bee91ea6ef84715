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
    private bool _completionPending;            // an explicit completion (Tab) wants an answer: asked again while idle if none came
    private bool _menuStale;                    // the menu's items are not for the text as it is: Enter, "." do not take them
    private bool _menuRefresh;                  // the menu was narrowed here: the host's answer may replace it
    private bool _signatureStale;               // to ask once no more keys are waiting
    private bool _signaturePending, _infoPending; // asked, no answer yet (or the host could not answer: asked again while idle)
    private int _drawnWidth;

    // The questions to the host go through one thread of their own, so a key never waits for the host (a "." used to
    // wait for the completion list). An answer is shown only if the text and caret are still what was asked about;
    // a key that needs it (Tab, Up/Down on a menu being computed) waits for it, keys behind it stay queued in order.
    private enum Ask { Completion, Signature, Info }
    private sealed record Question(Ask Kind, int Read, string Text, int Caret, bool Explicitly, long Seq);
    private readonly Question?[] _queued = new Question?[3];  // the newest question per kind the asker has not taken
    private readonly Question?[] _asking = new Question?[3];  // the one it is asking now
    private readonly long[] _answered = new long[3];          // the newest question per kind answered (or given up)
    private long _seq;
    private int _read;                          // which Read() this is: answers for an earlier prompt are dropped
    private CancellationToken _interrupt;
    private readonly SemaphoreSlim _wake = new(0);
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
        new Thread(AskLoop) { IsBackground = true, Name = "virtlab-editor-assist" }.Start();
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
            _completionPending = _signaturePending = _infoPending = _menuStale = _menuRefresh = _signatureStale = false;
            Array.Clear(_queued);
            _read++;
            _interrupt = interrupt;
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
                    lock (_screen)
                    {
                        // Idle: ask again what the host could not answer yet (starting, busy), one question at a time;
                        // redraw for a terminal that changed width (the rows wrap differently).
                        if (_completionPending && !Busy(Ask.Completion)) Post(Ask.Completion, explicitly: true);
                        else if (_menu is not null && (_menuStale || _menuRefresh) && !Busy(Ask.Completion)) Post(Ask.Completion);
                        if (_signaturePending && !Busy(Ask.Signature)) Post(Ask.Signature);
                        if (_infoPending && !Busy(Ask.Info)) Post(Ask.Info);
                        if (_drawn && _width() != _drawnWidth) Draw();
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
            // A menu not answered for this text yet takes nothing (what was never shown is not chosen).
            if (_menuStale) CloseMenu();
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
                    Delete(_caret, TextWidth.Next(_text, _caret));
                    return null;
                case ConsoleKey.LeftArrow: CloseMenu(); _caret = WordStart(_caret); return null;
                case ConsoleKey.RightArrow: CloseMenu(); _caret = WordEnd(_caret); return null;
                case ConsoleKey.H: Backspace(); return null;
                case ConsoleKey.Spacebar: CompleteNow(); return null;
            }
        }
        if (alt && key.Key == ConsoleKey.B) { _caret = WordStart(_caret); return null; }
        if (alt && key.Key == ConsoleKey.F) { _caret = WordEnd(_caret); return null; }

        switch (key.Key)
        {
            case ConsoleKey.Tab:
                // With the menu up, Tab takes the selected item (Up/Down choose); else it asks for completions.
                if (_menuStale || _menu is not { Items.Count: > 0 }) CompleteNow();
                else if ((key.Modifiers & ConsoleModifiers.Shift) != 0) Select(-1);
                else Accept();
                return null;
            case ConsoleKey.Escape:
                CloseMenu();
                _signature = null;
                _completionPending = _signaturePending = _signatureStale = false;
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
            case ConsoleKey.LeftArrow: CloseMenu(); _caret = TextWidth.Previous(_text, _caret); return null;
            case ConsoleKey.RightArrow: CloseMenu(); _caret = TextWidth.Next(_text, _caret); return null;
            case ConsoleKey.Home: CloseMenu(); _caret = LineStart(_caret); return null;
            case ConsoleKey.End: CloseMenu(); _caret = LineEnd(_caret); return null;
            case ConsoleKey.Backspace: Backspace(); return null;
            case ConsoleKey.Delete: Delete(_caret, TextWidth.Next(_text, _caret)); return null;
        }

        if (ch != '\0' && !char.IsControl(ch)) Type(ch);
        return null;
    }

    private void Type(char ch)
    {
        var identifier = char.IsLetterOrDigit(ch) || ch == '_';
        // A character that cannot continue the name commits the selected item first (as "Con" Tab "." gives "Console."),
        // if the menu is for the text as it is; one still being computed commits nothing.
        if (_menu is not null && !identifier)
        {
            if (_menuStale) CloseMenu();
            else Accept();
        }
        Insert(ch.ToString());
        if (identifier)
        {
            if (_menu is not null) Narrow();
        }
        else if (ch == '.') { _menu = new CompletionAnswer(_caret, 0, []); _menuStale = true; }
        if (ch is '(' or ',' or '[' || ch is ')' or ']' && _signature is not null) _signatureStale = true;
    }

    private void Backspace()
    {
        if (_caret == 0) return;
        // An indentation of spaces goes back four at a time.
        var start = LineStart(_caret);
        var n = _text[start.._caret].Length > 0 && _text[start.._caret].All(c => c == ' ') ? Math.Min(4, _caret - start)
            : _caret - TextWidth.Previous(_text, _caret); // a whole character: a surrogate pair, a letter and its marks
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
        // The same column on screen (a wide character takes two), not the same index.
        var start = LineStart(_caret);
        var column = TextWidth.Of(_text, start, _caret);
        var target = direction < 0 ? LineStart(start - 1) : LineEnd(_caret) + 1;
        var end = LineEnd(target);
        var at = target;
        while (at < end && TextWidth.Of(_text, target, TextWidth.Next(_text, at)) <= column) at = TextWidth.Next(_text, at);
        return at;
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
        if ((_menuStale || _menuRefresh) && !Asked(Ask.Completion)) Post(Ask.Completion);
        if (_signatureStale) Signature();
    }

    /// <summary>Tab, Ctrl+Space: the keys after it wait for the answer (as a shell's Tab), which may put the only
    /// candidate in. If the host cannot answer yet, say so and answer when it can.</summary>
    private void CompleteNow()
    {
        _completionPending = true;
        var seq = Post(Ask.Completion, explicitly: true);
        if (!Await(Ask.Completion, seq) || _completionPending)
            _status = "warming up: completion answers as soon as the evaluation host is ready (Esc: never mind)";
    }

    /// <summary>A menu key (Up/Down) on a menu still being computed: wait for it.</summary>
    private void FreshMenu()
    {
        if (!_menuStale) return;
        if (!Asked(Ask.Completion)) Post(Ask.Completion);
        var seq = Math.Max(_queued[(int)Ask.Completion]?.Seq ?? 0, _asking[(int)Ask.Completion]?.Seq ?? 0);
        Await(Ask.Completion, seq);
        if (_menuStale) CloseMenu(); // no answer: as if there were no menu
    }

    /// <summary>Typing on in the name the menu completes: the menu narrows at once, filtered as the host filters (the
    /// host's list for the position is the same); the host's answer then brings the descriptions of what is left.</summary>
    private void Narrow()
    {
        if (_menuStale || _menu is not { Items.Count: > 0 } menu || _caret < menu.Start) { _menuStale = true; return; }
        var typed = _text[menu.Start.._caret];
        var kept = menu.Items
            .Select((item, i) => (item, i, rank: Scripting.CodeAssist.Rank(item.Text.TrimEnd(':'), typed)))
            .Where(x => x.rank >= 0).OrderBy(x => x.rank).ThenBy(x => x.i).Select(x => x.item).ToList();
        var keep = _selected < menu.Items.Count ? menu.Items[_selected].Text : null;
        _menu = new CompletionAnswer(menu.Start, Math.Max(menu.Length + 1, _caret - menu.Start), kept);
        _selected = Math.Max(0, kept.FindIndex(i => i.Text == keep));
        if (kept.Count == 0) _menuStale = true;
        else _menuRefresh = true;
    }

    /// <summary>The host's completion list for the text as it is (on the editor's lock).</summary>
    private void ShowCompletions(CompletionAnswer? answer, bool explicitly)
    {
        if (answer is null) return; // the host cannot answer yet (starting, busy): asked again while idle
        _menuStale = _menuRefresh = false;
        if (explicitly) _completionPending = false;
        if (answer.Items.Count == 0)
        {
            CloseMenu();
            if (explicitly) _status = "no completions here";
            return;
        }
        if (explicitly && _status?.StartsWith("warming up", StringComparison.Ordinal) == true) _status = null;
        var keep = _menu is not null && _selected < _menu.Items.Count ? _menu.Items[_selected].Text : null;
        _menu = answer;
        var index = keep is null ? -1 : answer.Items.ToList().FindIndex(i => i.Text == keep);
        _selected = Math.Max(0, index);
        // One candidate for an explicit Tab: put it in at once.
        if (explicitly && answer.Items.Count == 1) Accept();
    }

    private void Select(int delta)
    {
        FreshMenu();
        if (_menu is not { Items.Count: > 0 }) return;
        var n = _menu.Items.Count;
        _selected = ((_selected + delta) % n + n) % n;
    }

    private void Accept()
    {
        if (_menuStale || _menu is not { Items.Count: > 0 } menu) { CloseMenu(); return; }
        var item = menu.Items[_selected];
        var end = Math.Min(_text.Length, menu.Start + menu.Length);
        if (menu.Start <= _text.Length && menu.Start <= end)
        {
            _text = _text[..menu.Start] + item.Text + _text[end..];
            _caret = menu.Start + item.Text.Length;
            _historyIndex = _history.Count;
        }
        CloseMenu();
    }

    private void CloseMenu()
    {
        _menu = null;
        _menuStale = _menuRefresh = false;
    }

    private bool IsTyped(CompletionAnswer menu) =>
        menu.Start + menu.Length <= _text.Length && _text.Substring(menu.Start, menu.Length) == menu.Items[_selected].Text;

    private void Signature()
    {
        _signatureStale = false;
        _signaturePending = true;
        Post(Ask.Signature);
    }

    private void QuickInfo()
    {
        CloseMenu();
        _infoPending = true;
        Post(Ask.Info);
    }

    // ---- the questions to the host (a thread of their own) ----------------------------------------------------

    /// <summary>Queues a question about the text as it is now (replacing an older one of its kind); its number.</summary>
    private long Post(Ask kind, bool explicitly = false)
    {
        var k = (int)kind;
        if (_asking[k] is { } now && now.Read == _read && now.Text == _text && now.Caret == _caret && (now.Explicitly || !explicitly))
        {
            _queued[k] = null; // being asked already
            return now.Seq;
        }
        var q = new Question(kind, _read, _text, _caret, explicitly, ++_seq);
        _queued[k] = q;
        _wake.Release();
        return q.Seq;
    }

    /// <summary>A question of this kind about the text as it is now is queued or being asked.</summary>
    private bool Asked(Ask kind) =>
        _queued[(int)kind] is { } q && q.Text == _text && q.Caret == _caret
        || _asking[(int)kind] is { } a && a.Read == _read && a.Text == _text && a.Caret == _caret;

    private bool Busy(Ask kind) => _queued[(int)kind] is not null || _asking[(int)kind] is not null;

    /// <summary>Waits (on the editor's lock, which the answer takes) until question <paramref name="seq"/> is answered.</summary>
    private bool Await(Ask kind, long seq)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(3);
        while (_answered[(int)kind] < seq)
        {
            if (_interrupt.IsCancellationRequested || DateTime.UtcNow > deadline) return false;
            Monitor.Wait(_screen, 50);
        }
        return true;
    }

    private void AskLoop()
    {
        while (true)
        {
            _wake.Wait();
            while (true)
            {
                Question? q = null;
                lock (_screen)
                {
                    for (var k = 0; k < _queued.Length && q is null; k++)
                        if (_queued[k] is { } next) { q = next; _queued[k] = null; _asking[k] = next; }
                }
                if (q is null) break;
                object? answer;
                try
                {
                    answer = q.Kind switch
                    {
                        Ask.Completion => _assist.Complete(q.Text, q.Caret),
                        Ask.Signature => _assist.Signature(q.Text, q.Caret),
                        _ => _assist.QuickInfo(q.Text, q.Caret),
                    };
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or InvalidOperationException) { answer = null; }
                lock (_screen)
                {
                    var k = (int)q.Kind;
                    _asking[k] = null;
                    _answered[k] = Math.Max(_answered[k], q.Seq);
                    if (IsReading && q.Read == _read && q.Text == _text && q.Caret == _caret && Answer(q, answer) && _drawn) Draw();
                    Monitor.PulseAll(_screen);
                }
            }
        }
    }

    /// <summary>Shows an answer about the text as it is; false if nothing wants it any more (Esc, a key since).</summary>
    private bool Answer(Question q, object? answer)
    {
        switch (q.Kind)
        {
            case Ask.Completion when q.Explicitly ? _completionPending : _menuStale || _menuRefresh:
                ShowCompletions(answer as CompletionAnswer, q.Explicitly);
                return true;
            case Ask.Signature when _signaturePending:
                if (answer is not Reply reply) return false; // the host is busy or starting: asked again while idle
                _signaturePending = false;
                _signature = reply.Signatures is { Count: > 0 } ? reply : null;
                return true;
            case Ask.Info when _infoPending:
                var info = answer as Reply;
                _infoPending = info is null;
                _info = info is null ? "warming up: quick info answers as soon as the evaluation host is ready"
                    : info.Info ?? "nothing known at the caret";
                return true;
            default:
                return false;
        }
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
        _read++; // an answer still on its way belongs to this prompt: it must not draw the input again below it
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
            // Rows by display width: a wide (CJK, emoji) character takes two columns, a combining mark none.
            var starts = TextWidth.Rows(line, room);
            for (var r = 0; r < starts.Count; r++)
            {
                if (row > 0) sb.Append("\r\n");
                var prompt = r > 0 ? "  " : i == 0 ? (_search is null ? "> " : "? ") : ". ";
                sb.Append(_color ? (i == 0 && r == 0 ? "\u001b[33m" : "\u001b[90m") + prompt + "\u001b[0m" : prompt);
                var from = starts[r];
                var to = r + 1 < starts.Count ? starts[r + 1] : line.Length;
                AppendColored(sb, line, from, to, kinds, offset);
                if (_caret >= offset + from && (_caret < offset + to || r == starts.Count - 1 && _caret <= offset + line.Length))
                {
                    caretRow = row;
                    caretCol = 2 + TextWidth.Of(line, from, _caret - offset);
                }
                row++;
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
        _drawnWidth = _width();
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
                var line = TextWidth.Fit($"{(selected ? "›" : " ")} {kind} {name}  {item.Detail}", fit);
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
        text = TextWidth.Fit(text.ReplaceLineEndings(" "), width);
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
