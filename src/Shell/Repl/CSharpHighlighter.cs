using System.Collections.Frozen;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace VirtLab.Shell.Repl;

/// <summary>
/// Lexical C# highlighting with Roslyn's lexer over the whole submission being edited (so a keyword inside a string
/// is a string), plus the names the evaluation host tells: globals, the session's variables and the types in scope
/// (<c>Vm</c>, <c>Workload</c>). The editor asks for one colour per character (<see cref="Classify"/>) and turns a
/// run of one colour into one SGR sequence (<see cref="Sgr"/>).
/// </summary>
internal sealed class CSharpHighlighter
{
    internal enum Kind : byte { None, Keyword, Control, String, Number, Comment, Global, Local, Meta, Directive, Type }

    private static readonly CSharpParseOptions ScriptOptions = new(LanguageVersion.Latest, kind: SourceCodeKind.Script);

    private volatile FrozenSet<string> _globals = FrozenSet<string>.Empty;
    private volatile FrozenSet<string> _locals = FrozenSet<string>.Empty;
    private volatile FrozenSet<string> _types = FrozenSet<string>.Empty;
    private string _classified = "";
    private Kind[] _kinds = [];

    public void SetGlobals(IEnumerable<string> names) => _globals = names.ToFrozenSet(StringComparer.Ordinal);
    public void SetLocals(IEnumerable<string> names) => _locals = names.ToFrozenSet(StringComparer.Ordinal);
    public void SetTypes(IEnumerable<string> names) => _types = names.ToFrozenSet(StringComparer.Ordinal);

    /// <summary>One kind per character of <paramref name="text"/> (the last answer is kept: a redraw without an edit is free).</summary>
    public Kind[] Classify(string text)
    {
        if (!ReferenceEquals(text, _classified) && text != _classified)
        {
            _kinds = Classify("", text);
            _classified = text;
        }
        return _kinds;
    }

    /// <summary>The SGR parameters of a kind (xterm 256 colours); null: default colour.</summary>
    public static string? Sgr(Kind kind) => kind switch
    {
        Kind.Keyword => "38;5;33",
        Kind.Control => "38;5;170",
        Kind.String => "38;5;208",
        Kind.Number => "38;5;120",
        Kind.Comment => "38;5;244",
        Kind.Global => "1;38;5;14",
        Kind.Local => "38;5;159",
        Kind.Meta => "1;38;5;11",
        Kind.Directive => "38;5;249",
        Kind.Type => "38;5;79",
        _ => null,
    };

    private Kind[] Classify(string preceding, string line)
    {
        var kinds = new Kind[line.Length];
        if (preceding.Length == 0 && line.TrimStart().StartsWith('#') && !line.Contains('\n') && MetaCommands.IsMeta(line))
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
                if (_types.Contains(text)) return Kind.Type;
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
