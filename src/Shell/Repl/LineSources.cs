using System.Collections.Concurrent;
using System.Reflection;
using RadLine;
using Spectre.Console;

namespace VirtLab.Shell.Repl;

internal enum LineStatus { Line, EndOfInput, Interrupted }

/// <summary>Where submissions come from: the terminal (RadLine) or piped stdin (plain lines, no prompt).</summary>
internal interface ILineSource : IDisposable
{
    /// <summary>One line. Interrupted when <paramref name="interrupt"/> fires (Ctrl+C at the prompt).</summary>
    Task<(LineStatus Status, string Line)> ReadLineAsync(bool continuation, string precedingText, CancellationToken interrupt);

    /// <summary>Prints a line of its own (hot-swap notice, host restart) without leaving the prompt garbled.</summary>
    void Notice(string text);

    void AddHistory(string entry);
    bool IsInteractive { get; }
}

/// <summary>Piped stdin: the same submission semantics (continuation included) without prompts or editing.</summary>
internal sealed class PipedLineSource : ILineSource
{
    private readonly object _outLock = new();
    public bool IsInteractive => false;

    public async Task<(LineStatus, string)> ReadLineAsync(bool continuation, string precedingText, CancellationToken interrupt)
    {
        // Console.In has no cancellable read; a Ctrl+C at the prompt in line mode simply has nothing to clear.
        var line = await Task.Run(Console.In.ReadLine).ConfigureAwait(false);
        return line is null ? (LineStatus.EndOfInput, "") : (LineStatus.Line, line);
    }

    public void Notice(string text)
    {
        lock (_outLock) { Console.Out.WriteLine(text); Console.Out.Flush(); }
    }

    public void AddHistory(string entry) { }
    public void Dispose() { }
}

/// <summary>The terminal: RadLine with highlighting, host-computed completion and history.</summary>
internal sealed class TerminalLineSource : ILineSource
{
    // RadLine 0.6.0 records every line it reads in its in-memory history and has no API to forget one. Continuation
    // lines are read one by one (see Repl.ReadSubmission), so that history would hold each of them besides the whole
    // submission. The line it records is dropped again through its private list, and the REPL adds each submission
    // itself (AddHistory). Should the field ever be missing, only the multi-line submissions are added and Up shows
    // continuation lines too, as plain RadLine would.
    private static readonly FieldInfo? s_historyList =
        typeof(LineEditor).Assembly.GetType("RadLine.LineEditorHistory")?.GetField("_history", BindingFlags.NonPublic | BindingFlags.Instance);

    private readonly IAnsiConsole _console;
    private readonly LineEditor _editor;
    private readonly InjectingInputSource _input;
    private readonly ReplPrompt _prompt;
    private readonly CSharpHighlighter _highlighter;
    private readonly HostCompletion _completion;
    private readonly LinkedList<LineBuffer[]>? _radLineHistory;
    private bool _endOfInput;
    private volatile bool _reading;

    public bool IsInteractive => true;

    /// <param name="console">The terminal (tests pass a recording console).</param>
    /// <param name="keys">Where keys come from; the console's keyboard by default.</param>
    public TerminalLineSource(CSharpHighlighter highlighter, HostCompletion completion, IEnumerable<string> history,
        IAnsiConsole? console = null, IInputSource? keys = null)
    {
        _console = console ?? AnsiConsole.Console;
        _input = new InjectingInputSource(keys);
        _highlighter = highlighter;
        _completion = completion;
        _prompt = new ReplPrompt(highlighter);
        _editor = new LineEditor(_console, _input)
        {
            MultiLine = false, // continuation lines are read one by one, as in line mode (see Repl.ReadSubmission)
            Prompt = _prompt,
            Highlighter = highlighter,
        };
        // One line at a time, so Up/Down walk the history instead of moving between lines.
        _editor.KeyBindings.Add<PreviousHistoryCommand>(ConsoleKey.UpArrow);
        _editor.KeyBindings.Add<NextHistoryCommand>(ConsoleKey.DownArrow);
        _editor.KeyBindings.Add(ConsoleKey.D, ConsoleModifiers.Control, () => new EndOfInputCommand(this));
        // Completion edits the identifier range the host names (RadLine's own Tab works on whitespace-separated words
        // and matches case-sensitively, so "vm.sl" would find nothing and Tab would not cycle through the members).
        _editor.KeyBindings.Add(ConsoleKey.Tab, () => new CompleteCommand(completion, forward: true));
        _editor.KeyBindings.Add(ConsoleKey.Tab, ConsoleModifiers.Shift, () => new CompleteCommand(completion, forward: false));
        _radLineHistory = s_historyList?.GetValue(_editor.History) as LinkedList<LineBuffer[]>;
        foreach (var entry in history) _editor.History.Add(entry);
    }

    public static bool IsSupported() =>
        !Console.IsInputRedirected && !Console.IsOutputRedirected && LineEditor.IsSupported(AnsiConsole.Console);

    public async Task<(LineStatus, string)> ReadLineAsync(bool continuation, string precedingText, CancellationToken interrupt)
    {
        _endOfInput = false;
        _prompt.IsContinuation = continuation;
        _highlighter.PrecedingText = precedingText;
        _completion.PrecedingText = precedingText;
        var entries = _editor.History.Count;
        _reading = true;
        string? line;
        try { line = await _editor.ReadLine(interrupt).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            // RadLine gives up mid-line when cancelled (Ctrl+C): end the line it left on screen.
            _console.Profile.Out.Writer.WriteLine();
            return (LineStatus.Interrupted, _highlighter.CurrentLine); // what was on the line (last rendered)
        }
        finally
        {
            _reading = false;
            while (_radLineHistory is not null && _radLineHistory.Count > entries) _radLineHistory.RemoveLast();
        }
        if (line is not null) return (LineStatus.Line, line);
        return (_endOfInput ? LineStatus.EndOfInput : LineStatus.Interrupted, "");
    }

    public void Notice(string text)
    {
        var writer = _console.Profile.Out.Writer;
        if (!_reading)
        {
            writer.WriteLine(text);
            writer.Flush();
            return;
        }
        // Clear the prompt line, print, and let RadLine redraw the line being edited below it.
        writer.Write("\r\u001b[2K" + text + "\n");
        writer.Flush();
        _input.Inject(new ConsoleKeyInfo('\0', ConsoleKey.F24, false, false, false));
    }

    /// <summary>One entry per submission (the history file has the same). The REPL calls it for every submission.</summary>
    public void AddHistory(string entry)
    {
        if (_radLineHistory is not null || entry.Contains('\n')) _editor.History.Add(entry);
    }

    public void Dispose() { }

    /// <summary>Ctrl+D on an empty line ends the session; elsewhere it deletes like Delete.</summary>
    private sealed class EndOfInputCommand(TerminalLineSource owner) : LineEditorCommand
    {
        public override void Execute(LineEditorContext context)
        {
            if (context.Buffer.Content.Length == 0)
            {
                owner._endOfInput = true;
                context.Submit(SubmitAction.Cancel);
            }
            else context.Execute(new DeleteCommand());
        }
    }

    /// <summary>Tab / Shift+Tab: the next / previous completion in place of the identifier at the cursor.</summary>
    private sealed class CompleteCommand(HostCompletion completion, bool forward) : LineEditorCommand
    {
        public override void Execute(LineEditorContext context)
        {
            var buffer = context.Buffer;
            if (completion.Next(buffer.Content, buffer.Position, forward) is not { } edit) return;
            buffer.Move(edit.Start);
            buffer.Clear(edit.Start, edit.Length);
            buffer.Insert(edit.Text);
            buffer.Move(edit.Start + edit.Text.Length);
        }
    }

    /// <summary>Keys from the terminal plus keys we inject: an unbound key makes RadLine redraw the line after a notice.</summary>
    private sealed class InjectingInputSource(IInputSource? keys) : IInputSource
    {
        private readonly ConcurrentQueue<ConsoleKeyInfo> _injected = new();
        public bool ByPassProcessing => false;
        public void Inject(ConsoleKeyInfo key) => _injected.Enqueue(key);
        public bool IsKeyAvailable() => !_injected.IsEmpty || (keys?.IsKeyAvailable() ?? Console.KeyAvailable);
        public ConsoleKeyInfo ReadKey() =>
            _injected.TryDequeue(out var k) ? k : keys?.ReadKey() ?? Console.ReadKey(intercept: true);
    }
}

/// <summary>
/// Tab completion backed by the evaluation host (which holds the semantic model): the host names the candidates and
/// the range they replace (the identifier at the cursor, matched case-insensitively: <c>vm.sl</c> → <c>vm.Slots</c>).
/// The first Tab puts in the first candidate; Tab again, with the line untouched since, the next one (Shift+Tab
/// the previous one), wrapping around. A <c>#</c> word at the start of a submission completes the meta-commands.
/// </summary>
internal sealed class HostCompletion(Func<string, int, Reply?> complete)
{
    /// <summary>Replace <see cref="Length"/> characters at <see cref="Start"/> of the line with <see cref="Text"/>; the cursor goes after it.</summary>
    public readonly record struct Edit(int Start, int Length, string Text);

    private sealed record Cycle(string Preceding, string Line, int Caret, int Start, IReadOnlyList<string> Items, int Index);

    private Cycle? _cycle;

    /// <summary>The submission's lines before the one being edited (continuation lines).</summary>
    public string PrecedingText { get; set; } = "";

    /// <summary>The edit for one Tab (<paramref name="forward"/>) or Shift+Tab at <paramref name="caret"/>; null: nothing to complete.</summary>
    public Edit? Next(string line, int caret, bool forward = true)
    {
        if (_cycle is { } c && c.Line == line && c.Caret == caret && c.Preceding == PrecedingText)
        {
            var index = (c.Index + (forward ? 1 : c.Items.Count - 1)) % c.Items.Count;
            return Put(line, c.Start, c.Items[c.Index].Length, c.Items, index);
        }
        _cycle = null;
        var (start, length, items) = Candidates(line, caret);
        return items.Count == 0 ? null : Put(line, start, length, items, forward ? 0 : items.Count - 1);
    }

    private Edit Put(string line, int start, int length, IReadOnlyList<string> items, int index)
    {
        var text = items[index];
        var after = line[..start] + text + line[(start + length)..];
        _cycle = items.Count > 1 ? new Cycle(PrecedingText, after, start + text.Length, start, items, index) : null;
        return new Edit(start, length, text);
    }

    private (int Start, int Length, IReadOnlyList<string> Items) Candidates(string line, int caret)
    {
        var trimmed = line.TrimStart();
        if (PrecedingText.Length == 0 && trimmed.StartsWith('#'))
        {
            // A meta-command's name; nothing to complete in its argument or in a directive (#r, #load "…").
            var start = line.Length - trimmed.Length;
            var end = line.IndexOfAny([' ', '\t'], start);
            if (end < 0) end = line.Length;
            if (caret <= start || caret > end) return (0, 0, []);
            var word = line[start..caret];
            return (start, end - start, MetaCommands.All.Select(m => "#" + m.Name).Where(n => n.StartsWith(word, StringComparison.Ordinal)).ToList());
        }
        var reply = complete(PrecedingText + line, PrecedingText.Length + caret);
        if (reply?.Completions is not { Count: > 0 } completions) return (0, 0, []);
        var from = reply.ReplaceStart - PrecedingText.Length;
        if (from < 0 || from + reply.ReplaceLength > line.Length) return (0, 0, []);
        return (from, reply.ReplaceLength, completions.Select(c => c.Text).Distinct().ToList());
    }
}
