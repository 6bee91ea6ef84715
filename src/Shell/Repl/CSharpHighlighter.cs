using System.Collections.Frozen;
using System.Reflection;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using RadLine;
using Spectre.Console;

namespace VirtLab.Shell.Repl;

/// <summary>
/// Lexical C# highlighting with Roslyn's lexer. RadLine asks for a style word by word (its own split:
/// runs of letters/digits and single other characters), which alone cannot tell a keyword inside a string
/// from a real one. So <see cref="ReplPrompt"/> hands over the whole line (and the submission's earlier
/// lines) just before RadLine renders it; the line is lexed once and each word RadLine asks about is looked
/// up at its position in that line.
/// </summary>
internal sealed class CSharpHighlighter : IHighlighter
{
    private enum Kind : byte { None, Keyword, Control, String, Number, Comment, Global, Local, Meta, Directive }

    private static readonly Style KeywordStyle = new(Color.DodgerBlue1);
    private static readonly Style ControlStyle = new(Color.Orchid);
    private static readonly Style StringStyle = new(Color.DarkOrange);
    private static readonly Style NumberStyle = new(Color.LightGreen);
    private static readonly Style CommentStyle = new(Color.Grey50);
    private static readonly Style GlobalStyle = new(Color.Aqua, decoration: Decoration.Bold);
    private static readonly Style LocalStyle = new(Color.PaleTurquoise1);
    private static readonly Style MetaStyle = new(Color.Yellow, decoration: Decoration.Bold);
    private static readonly Style DirectiveStyle = new(Color.Grey70);

    private static readonly CSharpParseOptions ScriptOptions = new(LanguageVersion.Latest, kind: SourceCodeKind.Script);

    private volatile FrozenSet<string> _globals = FrozenSet<string>.Empty;
    private volatile FrozenSet<string> _locals = FrozenSet<string>.Empty;
    private string _line = "";
    private string _classifiedWith = "";
    private Kind[] _kinds = [];
    private int _cursor;

    /// <summary>Text of the submission's lines before the one being edited (continuation lines).</summary>
    public string PrecedingText { get; set; } = "";

    public void SetGlobals(IEnumerable<string> names) => _globals = names.ToFrozenSet(StringComparer.Ordinal);
    public void SetLocals(IEnumerable<string> names) => _locals = names.ToFrozenSet(StringComparer.Ordinal);

    /// <summary>The line RadLine rendered last: what is being edited.</summary>
    public string CurrentLine => _line;

    /// <summary>Called right before RadLine renders <paramref name="line"/>.</summary>
    public void BeginLine(string line)
    {
        if (line != _line || !ReferenceEquals(PrecedingText, _classifiedWith))
        {
            _line = line;
            _classifiedWith = PrecedingText;
            _kinds = Classify(PrecedingText, line);
        }
        _cursor = 0;
    }

    public Style? Highlight(string token)
    {
        var at = _line.IndexOf(token, _cursor, StringComparison.Ordinal);
        Kind kind;
        if (at >= 0)
        {
            _cursor = at + token.Length;
            kind = _kinds[at];
        }
        else kind = ClassifyWord(token); // a horizontally scrolled line: fall back to the word alone
        return kind switch
        {
            Kind.Keyword => KeywordStyle,
            Kind.Control => ControlStyle,
            Kind.String => StringStyle,
            Kind.Number => NumberStyle,
            Kind.Comment => CommentStyle,
            Kind.Global => GlobalStyle,
            Kind.Local => LocalStyle,
            Kind.Meta => MetaStyle,
            Kind.Directive => DirectiveStyle,
            _ => null,
        };
    }

    private Kind ClassifyWord(string word)
    {
        var kind = SyntaxFacts.GetKeywordKind(word);
        if (kind != SyntaxKind.None) return IsControl(kind) ? Kind.Control : Kind.Keyword;
        if (_globals.Contains(word)) return Kind.Global;
        if (_locals.Contains(word)) return Kind.Local;
        return word.Length > 0 && char.IsDigit(word[0]) ? Kind.Number : Kind.None;
    }

    private Kind[] Classify(string preceding, string line)
    {
        var kinds = new Kind[line.Length];
        if (preceding.Length == 0 && line.TrimStart().StartsWith('#') && MetaCommands.IsMeta(line))
        {
            Array.Fill(kinds, Kind.Meta);
            return kinds;
        }
        var offset = preceding.Length;
        var text = preceding + line;
        foreach (var token in SyntaxFactory.ParseTokens(text, options: ScriptOptions))
        {
            foreach (var trivia in token.LeadingTrivia) Mark(kinds, offset, trivia.Span, TriviaKind(trivia));
            Mark(kinds, offset, token.Span, TokenKind(token));
            foreach (var trivia in token.TrailingTrivia) Mark(kinds, offset, trivia.Span, TriviaKind(trivia));
        }
        return kinds;
    }

    private static void Mark(Kind[] kinds, int offset, Microsoft.CodeAnalysis.Text.TextSpan span, Kind kind)
    {
        if (kind == Kind.None) return;
        var start = Math.Max(0, span.Start - offset);
        var end = Math.Min(kinds.Length, span.End - offset);
        for (var i = start; i < end; i++) kinds[i] = kind;
    }

    private static Kind TriviaKind(SyntaxTrivia trivia) => trivia.Kind() switch
    {
        SyntaxKind.SingleLineCommentTrivia or SyntaxKind.MultiLineCommentTrivia
            or SyntaxKind.SingleLineDocumentationCommentTrivia or SyntaxKind.MultiLineDocumentationCommentTrivia => Kind.Comment,
        _ when trivia.IsDirective || trivia.IsKind(SyntaxKind.DisabledTextTrivia) => Kind.Directive,
        _ => Kind.None,
    };

    private Kind TokenKind(SyntaxToken token)
    {
        var kind = token.Kind();
        if (SyntaxFacts.IsReservedKeyword(kind)) return IsControl(kind) ? Kind.Control : Kind.Keyword;
        switch (kind)
        {
            case SyntaxKind.StringLiteralToken or SyntaxKind.CharacterLiteralToken or SyntaxKind.InterpolatedStringStartToken
                or SyntaxKind.InterpolatedStringEndToken or SyntaxKind.InterpolatedStringTextToken or SyntaxKind.InterpolatedVerbatimStringStartToken
                or SyntaxKind.SingleLineRawStringLiteralToken or SyntaxKind.MultiLineRawStringLiteralToken
                or SyntaxKind.InterpolatedSingleLineRawStringStartToken or SyntaxKind.InterpolatedMultiLineRawStringStartToken
                or SyntaxKind.InterpolatedRawStringEndToken or SyntaxKind.Utf8StringLiteralToken:
                return Kind.String;
            case SyntaxKind.NumericLiteralToken:
                return Kind.Number;
            case SyntaxKind.IdentifierToken:
                var text = token.ValueText;
                if (SyntaxFacts.GetContextualKeywordKind(text) is var ck && ck != SyntaxKind.None && text is "var" or "await" or "async" or "dynamic" or "nameof" or "when" or "yield" or "record" or "init" or "with")
                    return Kind.Keyword;
                if (_globals.Contains(text)) return Kind.Global;
                if (_locals.Contains(text)) return Kind.Local;
                return Kind.None;
            default:
                return Kind.None;
        }
    }

    private static bool IsControl(SyntaxKind kind) => kind is SyntaxKind.IfKeyword or SyntaxKind.ElseKeyword or SyntaxKind.ForKeyword
        or SyntaxKind.ForEachKeyword or SyntaxKind.WhileKeyword or SyntaxKind.DoKeyword or SyntaxKind.ReturnKeyword or SyntaxKind.BreakKeyword
        or SyntaxKind.ContinueKeyword or SyntaxKind.SwitchKeyword or SyntaxKind.CaseKeyword or SyntaxKind.TryKeyword or SyntaxKind.CatchKeyword
        or SyntaxKind.FinallyKeyword or SyntaxKind.ThrowKeyword or SyntaxKind.GotoKeyword or SyntaxKind.YieldKeyword;
}

/// <summary>
/// "> " for the first line of a submission, ". " for continuation lines. It also passes the line being
/// rendered to the highlighter: RadLine's state object (internal in RadLine 0.6.0) is read by reflection,
/// and highlighting degrades to word-by-word if that ever fails.
/// </summary>
internal sealed class ReplPrompt(CSharpHighlighter highlighter) : ILineEditorPrompt
{
    private static readonly Markup First = new("[yellow]>[/]");
    private static readonly Markup Continuation = new("[grey].[/]");
    private MethodInfo? _getBufferAt;
    private bool _reflectionFailed;

    public bool IsContinuation { get; set; }

    public (Markup Markup, int Margin) GetPrompt(ILineEditorState state, int line)
    {
        if (!_reflectionFailed)
        {
            try
            {
                _getBufferAt ??= state.GetType().GetMethod("GetBufferAt", BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.Instance);
                if (_getBufferAt?.Invoke(state, [line]) is LineBuffer buffer) highlighter.BeginLine(buffer.Content);
                else _reflectionFailed = true;
            }
            catch (Exception e) when (e is TargetInvocationException or ArgumentException or MemberAccessException) { _reflectionFailed = true; }
        }
        return (IsContinuation || line > 0 ? Continuation : First, 1);
    }
}
