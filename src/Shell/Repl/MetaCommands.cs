using System.Text;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace VirtLab.Shell.Repl;

/// <summary>The REPL's own commands (a line starting with '#' and one of these names) and the recipe #save writes.</summary>
internal static class MetaCommands
{
    public static readonly IReadOnlyList<(string Name, string Args, string Help)> All =
    [
        ("help", "", "this list"),
        ("plugins", "", "loaded plugins: name, version, global, path, status"),
        ("reload", "", "fresh evaluation host with the current plugin builds; replays the session"),
        ("load", "FILE", "evaluate a C# file as one submission"),
        ("save", "FILE", "write the session's successful submissions as a runnable recipe"),
        ("reset", "", "fresh evaluation host, forget every submission"),
        ("exit", "", "leave (also Ctrl+D, or Ctrl+C twice on an empty line)"),
    ];

    public static bool IsMeta(string line)
    {
        var (name, _) = Split(line);
        return name is not null && All.Any(c => c.Name == name);
    }

    // Directives C# scripts may use: these lines go to the compiler, not to the meta-command table.
    private static readonly HashSet<string> CSharpDirectives =
        ["r", "load", "define", "undef", "if", "elif", "else", "endif", "region", "endregion", "pragma", "nullable", "line", "error", "warning"];

    /// <summary>The name of a one-line "#word …" that is neither a meta-command nor a C# directive (a typo like "#relaod"); else null.</summary>
    public static string? UnknownMeta(string text)
    {
        if (text.Contains('\n')) return null;
        var (name, _) = Split(text);
        if (string.IsNullOrEmpty(name) || !name.All(char.IsAsciiLetter)) return null;
        return IsMeta(text) || CSharpDirectives.Contains(name) ? null : name;
    }

    /// <summary>"#save out.csx" → ("save", "out.csx"); not a '#' line → (null, "").</summary>
    public static (string? Name, string Argument) Split(string line)
    {
        var t = line.Trim();
        if (!t.StartsWith('#')) return (null, "");
        var space = t.IndexOfAny([' ', '\t']);
        var name = space < 0 ? t[1..] : t[1..space];
        var arg = space < 0 ? "" : t[(space + 1)..].Trim();
        if (arg.Length >= 2 && arg[0] == '"' && arg[^1] == '"') arg = arg[1..^1]; // #load "x.csx" works too
        return (name, arg);
    }

    public static string HelpText()
    {
        var sb = new StringBuilder("Meta-commands:\n");
        foreach (var (name, args, help) in All)
            sb.Append("  #").Append((name + " " + args).TrimEnd().PadRight(14)).Append(help).Append('\n');
        sb.Append("Enter evaluates a complete submission and continues an incomplete one (two empty lines end it anyway);\nTab completes; ")
          .Append("Up/Down walk the history (~/.virtlab/history); Ctrl+C cancels an evaluation or clears the line.");
        return sb.ToString();
    }

    /// <summary>
    /// The session as a recipe. A submission ending in a bare expression (shown as a value in the REPL) is not
    /// a statement in a script: a call, assignment or similar gets its semicolon, anything else (an inspection
    /// like <c>vm</c>) is kept as a comment.
    /// </summary>
    public static string Recipe(IEnumerable<string> submissions)
    {
        var sb = new StringBuilder();
        sb.Append("// Saved from the virtlab REPL on ").Append(DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm 'UTC'")).Append(".\n");
        sb.Append("// Run: virtlab run <this file>\n\n");
        foreach (var s in submissions)
            sb.Append(AsStatement(s).TrimEnd()).Append("\n\n");
        return sb.ToString().TrimEnd() + "\n";
    }

    private static readonly CSharpParseOptions ScriptOptions = new(LanguageVersion.Latest, kind: SourceCodeKind.Script);

    internal static string AsStatement(string submission)
    {
        var root = CSharpSyntaxTree.ParseText(submission, ScriptOptions).GetCompilationUnitRoot();
        if (root.Members.LastOrDefault() is not GlobalStatementSyntax { Statement: ExpressionStatementSyntax { SemicolonToken.IsMissing: true } stmt })
            return submission;
        var expr = stmt.Expression;
        var end = expr.Span.End;
        var before = submission[..expr.SpanStart];
        var text = submission[expr.SpanStart..end];
        var after = submission[end..];
        return IsStatementExpression(expr)
            ? before + text + ";" + after
            : before + "// " + text.ReplaceLineEndings("\n// ") + "   (shown in the REPL)" + after;
    }

    private static bool IsStatementExpression(ExpressionSyntax e) => e is InvocationExpressionSyntax or AssignmentExpressionSyntax
        or AwaitExpressionSyntax or ObjectCreationExpressionSyntax or ImplicitObjectCreationExpressionSyntax
        or PrefixUnaryExpressionSyntax { RawKind: (int)SyntaxKind.PreIncrementExpression or (int)SyntaxKind.PreDecrementExpression }
        or PostfixUnaryExpressionSyntax { RawKind: (int)SyntaxKind.PostIncrementExpression or (int)SyntaxKind.PostDecrementExpression };

    /// <summary>Names a submission declares (for highlighting): variables, local functions, types.</summary>
    public static IEnumerable<string> DeclaredNames(string submission)
    {
        var root = CSharpSyntaxTree.ParseText(submission, ScriptOptions).GetCompilationUnitRoot();
        foreach (var member in root.Members)
        {
            switch (member)
            {
                case GlobalStatementSyntax { Statement: LocalDeclarationStatementSyntax decl }:
                    foreach (var v in decl.Declaration.Variables) yield return v.Identifier.ValueText;
                    break;
                case GlobalStatementSyntax { Statement: LocalFunctionStatementSyntax fn }:
                    yield return fn.Identifier.ValueText;
                    break;
                case FieldDeclarationSyntax field:
                    foreach (var v in field.Declaration.Variables) yield return v.Identifier.ValueText;
                    break;
                case MethodDeclarationSyntax method:
                    yield return method.Identifier.ValueText;
                    break;
                case BaseTypeDeclarationSyntax type:
                    yield return type.Identifier.ValueText;
                    break;
            }
        }
    }

    /// <summary>
    /// A declaration or expression statement that is complete but for its final semicolon (<c>var y = 5</c>,
    /// <c>vm.Run(w)</c> inside a block is not at the end): with it added the text parses without an error. Only those
    /// two statement kinds: <c>for (;;)</c> with a semicolon added would be an empty loop, not what was meant.
    /// </summary>
    public static bool CompleteButForSemicolon(string text)
    {
        var root = CSharpSyntaxTree.ParseText(text, ScriptOptions).GetCompilationUnitRoot();
        // A script's top-level "var y = 5" is a field declaration; inside a statement it is a local one.
        var missing = root.Members.LastOrDefault() switch
        {
            FieldDeclarationSyntax f => f.SemicolonToken.IsMissing,
            GlobalStatementSyntax { Statement: LocalDeclarationStatementSyntax l } => l.SemicolonToken.IsMissing,
            GlobalStatementSyntax { Statement: ExpressionStatementSyntax e } => e.SemicolonToken.IsMissing,
            _ => false,
        };
        if (!missing) return false;
        var fixedRoot = CSharpSyntaxTree.ParseText(text.TrimEnd() + ";", ScriptOptions);
        return !fixedRoot.GetDiagnostics().Any(d => d.Severity == DiagnosticSeverity.Error) && SyntaxFactory.IsCompleteSubmission(fixedRoot);
    }

    public static bool IsCompleteSubmission(string text) =>
        SyntaxFactory.IsCompleteSubmission(CSharpSyntaxTree.ParseText(text, ScriptOptions));
}
