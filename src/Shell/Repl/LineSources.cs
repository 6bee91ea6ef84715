using Spectre.Console;

namespace VirtLab.Shell.Repl;

internal enum LineStatus { Line, EndOfInput, Interrupted }

/// <summary>Where submissions come from: the terminal (<see cref="LineEditor"/>) or piped stdin (plain lines, no prompt).</summary>
internal interface ILineSource : IDisposable
{
    /// <summary>One line. Interrupted when <paramref name="interrupt"/> fires (Ctrl+C at the prompt).</summary>
    Task<(LineStatus Status, string Line)> ReadLineAsync(bool continuation, string precedingText, CancellationToken interrupt);

    /// <summary>Prints a line of its own (hot-swap notice, host restart) without leaving the prompt garbled.</summary>
    void Notice(string text);

    void AddHistory(string entry);
    bool IsInteractive { get; }

    /// <summary>Each read returns a whole submission (the terminal's editor), not one line of it.</summary>
    bool ReadsWholeSubmissions { get; }
}

/// <summary>Piped stdin: the same submission semantics (continuation included) without prompts or editing.</summary>
internal sealed class PipedLineSource : ILineSource
{
    private readonly object _outLock = new();
    public bool IsInteractive => false;
    public bool ReadsWholeSubmissions => false;

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

/// <summary>The terminal: <see cref="LineEditor"/> with highlighting, host-computed completion and history. It returns
/// whole submissions (the editor keeps reading lines until the code is complete).</summary>
internal sealed class TerminalLineSource : ILineSource
{
    private readonly LineEditor _editor;

    public bool IsInteractive => true;
    public bool ReadsWholeSubmissions => true;

    /// <param name="output">The terminal (tests pass a writer they read).</param>
    /// <param name="keys">Where keys come from; the terminal's by default.</param>
    public TerminalLineSource(CSharpHighlighter highlighter, ICodeAssist assist, IEnumerable<string> history, bool color,
        TextWriter? output = null, IKeySource? keys = null, Func<int>? width = null)
    {
        _editor = new LineEditor(output ?? Console.Out, width ?? (() => AnsiConsole.Console.Profile.Width), highlighter, assist,
            keys ?? new ConsoleKeys(), Submission, color, history);
    }

    /// <summary>A terminal on both ends, and TERM not "dumb".</summary>
    public static bool IsSupported() =>
        !Console.IsInputRedirected && !Console.IsOutputRedirected && Environment.GetEnvironmentVariable("TERM") is not (null or "" or "dumb");

    /// <summary>What Enter does with the text: the submission to run, or null for a new line. A meta-command, a complete
    /// submission, one complete but for its final semicolon (<c>var y = 5</c>: the semicolon is added), and anything
    /// after two empty lines (an unterminated string: its errors show) are submitted.</summary>
    internal static string? Submission(string text)
    {
        if (string.IsNullOrWhiteSpace(text)) return text;
        if (!text.Contains('\n') && MetaCommands.IsMeta(text)) return text;
        if (MetaCommands.IsCompleteSubmission(text)) return text;
        if (MetaCommands.CompleteButForSemicolon(text)) return text.TrimEnd() + ";";
        if (text.EndsWith("\n\n", StringComparison.Ordinal)) return text.TrimEnd('\n');
        return null;
    }

    public Task<(LineStatus, string)> ReadLineAsync(bool continuation, string precedingText, CancellationToken interrupt) =>
        Task.Run(() =>
        {
            var (outcome, text) = _editor.Read(interrupt);
            return outcome switch
            {
                LineEditor.Outcome.Submit => (LineStatus.Line, text),
                LineEditor.Outcome.EndOfInput => (LineStatus.EndOfInput, ""),
                _ => (LineStatus.Interrupted, text),
            };
        });

    public void Notice(string text) => _editor.Notice(text);

    /// <summary>One entry per submission, consecutive repeats once (the history file has the same).</summary>
    public void AddHistory(string entry) => _editor.AddHistory(entry);

    public void Dispose() { }
}

/// <summary>
/// The editor's questions to the evaluation host (which holds the semantic model) through the REPL's request function;
/// a null reply means the host cannot answer now (still starting, or busy) and the editor says so. A <c>#</c> word at
/// the start of a submission completes the meta-commands without asking.
/// </summary>
internal sealed class HostAssist(Func<Request, Reply?> ask) : ICodeAssist
{
    public CompletionAnswer? Complete(string text, int caret)
    {
        var trimmed = text.TrimStart();
        if (trimmed.StartsWith('#') && !text.Contains('\n'))
        {
            // A meta-command's name; nothing to complete in its argument or in a directive (#r, #load "…").
            var start = text.Length - trimmed.Length;
            var end = text.IndexOfAny([' ', '\t'], start);
            if (end < 0) end = text.Length;
            if (caret <= start || caret > end) return new CompletionAnswer(caret, 0, []);
            var word = text[start..caret];
            var metas = MetaCommands.All.Where(m => ("#" + m.Name).StartsWith(word, StringComparison.Ordinal))
                .Select(m => new CompletionEntry { Text = "#" + m.Name, Kind = "Meta", Detail = m.Help }).ToList();
            return new CompletionAnswer(start, end - start, metas);
        }
        var reply = ask(new Request { Kind = RequestKind.Complete, Code = text, Position = caret });
        if (reply is null) return null;
        var items = reply.Completions ?? [];
        if (items.Count == 0 || reply.ReplaceStart < 0 || reply.ReplaceStart + reply.ReplaceLength > text.Length)
            return new CompletionAnswer(caret, 0, []);
        return new CompletionAnswer(reply.ReplaceStart, reply.ReplaceLength, items);
    }

    public Reply? Signature(string text, int caret) => ask(new Request { Kind = RequestKind.Signature, Code = text, Position = caret });
    public Reply? QuickInfo(string text, int caret) => ask(new Request { Kind = RequestKind.QuickInfo, Code = text, Position = caret });
}
