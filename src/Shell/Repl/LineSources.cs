using System.Collections.Concurrent;
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
    private readonly LineEditor _editor;
    private readonly InjectingInputSource _input = new();
    private readonly ReplPrompt _prompt;
    private readonly CSharpHighlighter _highlighter;
    private readonly HostCompletion _completion;
    private bool _endOfInput;
    private volatile bool _reading;

    public bool IsInteractive => true;

    public TerminalLineSource(CSharpHighlighter highlighter, HostCompletion completion, IEnumerable<string> history)
    {
        _highlighter = highlighter;
        _completion = completion;
        _prompt = new ReplPrompt(highlighter);
        _editor = new LineEditor(AnsiConsole.Console, _input)
        {
            MultiLine = false, // continuation lines are read one by one, as in line mode (see Repl.ReadSubmission)
            Prompt = _prompt,
            Highlighter = highlighter,
            Completion = completion,
        };
        // One line at a time, so Up/Down walk the history instead of moving between lines.
        _editor.KeyBindings.Add<PreviousHistoryCommand>(ConsoleKey.UpArrow);
        _editor.KeyBindings.Add<NextHistoryCommand>(ConsoleKey.DownArrow);
        _editor.KeyBindings.Add(ConsoleKey.D, ConsoleModifiers.Control, () => new EndOfInputCommand(this));
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
        _reading = true;
        string? line;
        try { line = await _editor.ReadLine(interrupt).ConfigureAwait(false); }
        catch (OperationCanceledException)
        {
            // RadLine gives up mid-line when cancelled (Ctrl+C): end the line it left on screen.
            AnsiConsole.Console.Profile.Out.Writer.WriteLine();
            return (LineStatus.Interrupted, _highlighter.CurrentLine); // what was on the line (last rendered)
        }
        finally { _reading = false; }
        if (line is not null) return (LineStatus.Line, line);
        return (_endOfInput ? LineStatus.EndOfInput : LineStatus.Interrupted, "");
    }

    public void Notice(string text)
    {
        if (!_reading)
        {
            AnsiConsole.Console.Profile.Out.Writer.WriteLine(text);
            return;
        }
        // Clear the prompt line, print, and let RadLine redraw the line being edited below it.
        var writer = AnsiConsole.Console.Profile.Out.Writer;
        writer.Write("\r\u001b[2K" + text + "\n");
        writer.Flush();
        _input.Inject(new ConsoleKeyInfo('\0', ConsoleKey.F24, false, false, false));
    }

    // RadLine records each line it reads; a multi-line submission is added whole as well, so that Up
    // brings it back in one piece. (The history file is written by Repl.)
    public void AddHistory(string entry)
    {
        if (entry.Contains('\n')) _editor.History.Add(entry);
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

    /// <summary>Console keys plus keys we inject: an unbound key makes RadLine redraw the line after a notice.</summary>
    private sealed class InjectingInputSource : IInputSource
    {
        private readonly ConcurrentQueue<ConsoleKeyInfo> _injected = new();
        public bool ByPassProcessing => false;
        public void Inject(ConsoleKeyInfo key) => _injected.Enqueue(key);
        public bool IsKeyAvailable() => !_injected.IsEmpty || Console.KeyAvailable;
        public ConsoleKeyInfo ReadKey() => _injected.TryDequeue(out var k) ? k : Console.ReadKey(intercept: true);
    }
}

/// <summary>
/// RadLine completion backed by the evaluation host (which holds the semantic model). RadLine's "word" is
/// whitespace-delimited (<c>vm.Sl</c>), while the host replaces an identifier (<c>Sl</c>); each item is
/// returned as the whole new word so that RadLine can swap it in and cycle through the items with Tab.
/// </summary>
internal sealed class HostCompletion(Func<string, int, Reply?> complete) : ITextCompletion
{
    public string PrecedingText { get; set; } = "";

    public IEnumerable<string> GetCompletions(string prefix, string word, string suffix)
    {
        // Meta-commands: "#" at the start of a submission.
        if (PrecedingText.Length == 0 && prefix.Length == 0 && word.StartsWith('#'))
            return MetaCommands.All.Select(c => "#" + c.Name).Where(n => n.StartsWith(word, StringComparison.Ordinal));
        var wordStart = PrecedingText.Length + prefix.Length;
        var code = PrecedingText + prefix + word + suffix;
        var reply = complete(code, wordStart + word.Length);
        if (reply?.Completions is not { Count: > 0 } items) return [];
        var from = reply.ReplaceStart - wordStart;
        var to = from + reply.ReplaceLength;
        if (from < 0 || to > word.Length) return [];
        var head = word[..from];
        var tail = word[to..];
        return items.Select(c => head + c.Text + tail).Distinct().ToList();
    }
}
