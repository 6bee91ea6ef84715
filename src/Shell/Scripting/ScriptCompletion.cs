using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;

namespace VirtLab.Shell.Scripting;

public enum CompletionKind { Keyword, Namespace, Type, Method, ExtensionMethod, Property, Field, Event, Variable, Global, Local, Parameter, EnumMember, Other }

/// <summary>One completion: replace [ReplaceStart, ReplaceStart+ReplaceLength) of the input with <see cref="Text"/>.</summary>
public sealed record Completion(string Text, CompletionKind Kind, string Detail, int ReplaceStart, int ReplaceLength);

/// <summary>
/// Completion from the semantic model of a throwaway submission chained on the session's last successful one
/// (Microsoft.CodeAnalysis.CSharp.Features is not available): after a dot, the members of the expression's
/// type (extension methods included) or of a type/namespace (its static members, enum members); after <c>new</c>
/// types and namespaces; elsewhere the names in scope — script globals, plugin globals, variables of earlier
/// submissions, locals and lambda parameters, types, namespaces — and keywords.
/// </summary>
internal sealed class ScriptCompletion(ScriptCompiler compiler)
{
    private static readonly string[] s_keywords =
    [
        "abstract","as","async","await","base","bool","break","byte","case","catch","char","checked","class","const","continue",
        "decimal","default","delegate","do","double","dynamic","else","enum","event","explicit","false","finally","fixed","float",
        "for","foreach","goto","if","implicit","in","int","interface","internal","is","lock","long","nameof","new","null","object",
        "out","override","params","private","protected","public","readonly","record","ref","return","sbyte","sealed","short","sizeof",
        "stackalloc","static","string","struct","switch","this","throw","true","try","typeof","uint","ulong","unchecked","unsafe",
        "ushort","using","var","virtual","void","volatile","when","while","with","yield",
    ];

    private static readonly string[] s_typeKeywords =
        ["bool", "byte", "char", "decimal", "double", "float", "int", "long", "object", "sbyte", "short", "string", "uint", "ulong", "ushort"];

    private static readonly SymbolDisplayFormat s_detailFormat = SymbolDisplayFormat.MinimallyQualifiedFormat
        .WithMemberOptions(SymbolDisplayMemberOptions.IncludeParameters | SymbolDisplayMemberOptions.IncludeType | SymbolDisplayMemberOptions.IncludeContainingType)
        .WithParameterOptions(SymbolDisplayParameterOptions.IncludeType | SymbolDisplayParameterOptions.IncludeName | SymbolDisplayParameterOptions.IncludeDefaultValue);

    public IReadOnlyList<Completion> Complete(string code, int caret, CSharpCompilation? previous, string assemblyName)
    {
        caret = Math.Clamp(caret, 0, code.Length);
        int start = caret;
        while (start > 0 && (char.IsLetterOrDigit(code[start - 1]) || code[start - 1] == '_')) start--;
        var prefix = code[start..caret];
        // The word after the caret is replaced too (completing in the middle of an identifier).
        int end = caret;
        while (end < code.Length && (char.IsLetterOrDigit(code[end]) || code[end] == '_')) end++;

        // Inside a comment or a string literal there is nothing to complete.
        var tree = ScriptCompiler.Parse(code);
        var root = tree.GetRoot();
        if (InCommentOrString(root, root.FindToken(Math.Max(0, caret - 1)), caret)) return [];

        var compilation = compiler.CreateSubmission(assemblyName, tree, previous);
        var model = compilation.GetSemanticModel(tree);

        int dot = start - 1;
        while (dot >= 0 && char.IsWhiteSpace(code[dot])) dot--;
        // After a dot (not a range "..") members of what precedes it, else everything in scope.
        bool members = dot >= 0 && code[dot] == '.' && !(dot > 0 && code[dot - 1] == '.');
        // After "new" only a type can follow: types and namespaces (to qualify one), and the built-in type keywords.
        bool afterNew = !members && dot >= 0 && root.FindToken(dot) is var before && before.IsKind(SyntaxKind.NewKeyword)
                        && before.Span.End == dot + 1;
        var symbols = members ? MemberSymbols(model, root.FindToken(dot), start)
            : afterNew ? model.LookupNamespacesAndTypes(start)
            : model.LookupSymbols(start);

        var items = new Dictionary<string, Completion>(StringComparer.Ordinal);
        foreach (var s in symbols)
        {
            if (!IsShown(s) || !Matches(s.Name, prefix)) continue;
            if (items.ContainsKey(s.Name)) continue; // overloads: the first one stands for all
            items[s.Name] = new Completion(s.Name, KindOf(s), Detail(s), start, end - start);
        }
        if (!members)
            foreach (var k in afterNew ? s_typeKeywords : s_keywords)
                if (Matches(k, prefix) && !items.ContainsKey(k))
                    items[k] = new Completion(k, CompletionKind.Keyword, "keyword", start, end - start);

        return items.Values
            .OrderBy(c => c.Text.StartsWith(prefix, StringComparison.Ordinal) ? 0 : 1)
            .ThenBy(c => c.Kind == CompletionKind.Keyword ? 1 : 0)
            .ThenBy(c => c.Text, StringComparer.OrdinalIgnoreCase)
            .ToList();
    }

    private static IEnumerable<ISymbol> MemberSymbols(SemanticModel model, SyntaxToken dotToken, int position)
    {
        ExpressionSyntax? left = dotToken.Parent switch
        {
            MemberAccessExpressionSyntax ma => ma.Expression,
            QualifiedNameSyntax qn => qn.Left,
            MemberBindingExpressionSyntax mb => (mb.Parent?.Parent as ConditionalAccessExpressionSyntax)?.Expression
                                                ?? mb.FirstAncestorOrSelf<ConditionalAccessExpressionSyntax>()?.Expression,
            _ => null,
        };
        if (left is null) return [];

        var symbol = model.GetSymbolInfo(left).Symbol;
        if (symbol is INamespaceSymbol ns) return model.LookupNamespacesAndTypes(position, ns);
        if (symbol is INamedTypeSymbol named && left is not InvocationExpressionSyntax) return model.LookupStaticMembers(position, named);
        var type = model.GetTypeInfo(left).Type;
        if (type is null || type.TypeKind == TypeKind.Error) return [];
        return InstanceMembers(model, position, type);
    }

    private static IEnumerable<ISymbol> InstanceMembers(SemanticModel model, int position, ITypeSymbol type) =>
        model.LookupSymbols(position, type, includeReducedExtensionMethods: true)
            .Where(s => !s.IsStatic || s is IMethodSymbol { MethodKind: MethodKind.ReducedExtension })
            .Where(s => s.Kind != SymbolKind.NamedType);

    private static bool InCommentOrString(SyntaxNode root, SyntaxToken token, int caret)
    {
        var trivia = root.FindTrivia(Math.Max(0, caret - 1));
        if (trivia.IsKind(SyntaxKind.SingleLineCommentTrivia) || trivia.IsKind(SyntaxKind.MultiLineCommentTrivia))
            return caret > trivia.SpanStart;
        return token.IsKind(SyntaxKind.StringLiteralToken) && caret > token.SpanStart && caret < token.Span.End
               || token.IsKind(SyntaxKind.InterpolatedStringTextToken);
    }

    private static bool Matches(string name, string prefix) =>
        prefix.Length == 0 || name.StartsWith(prefix, StringComparison.OrdinalIgnoreCase);

    private static bool IsShown(ISymbol s)
    {
        if (s.IsImplicitlyDeclared || s.Name.Length == 0 || !SyntaxFacts.IsValidIdentifier(s.Name)) return false;
        if (s.Name.StartsWith("__", StringComparison.Ordinal)) return false;
        if (s is INamedTypeSymbol { IsScriptClass: true } or INamedTypeSymbol { IsImplicitClass: true }) return false;
        return s switch
        {
            IMethodSymbol m => m.MethodKind is MethodKind.Ordinary or MethodKind.ReducedExtension or MethodKind.LocalFunction,
            _ => true,
        };
    }

    private static CompletionKind KindOf(ISymbol s) => s switch
    {
        INamespaceSymbol => CompletionKind.Namespace,
        ITypeSymbol => CompletionKind.Type,
        IMethodSymbol { MethodKind: MethodKind.ReducedExtension } => CompletionKind.ExtensionMethod,
        IMethodSymbol => CompletionKind.Method,
        IFieldSymbol { ContainingType.IsScriptClass: true } => CompletionKind.Variable,
        IFieldSymbol { ContainingType.TypeKind: TypeKind.Enum } => CompletionKind.EnumMember,
        IFieldSymbol => CompletionKind.Field,
        IPropertySymbol p when IsGlobals(p) => CompletionKind.Global,
        IPropertySymbol => CompletionKind.Property,
        IEventSymbol => CompletionKind.Event,
        ILocalSymbol => CompletionKind.Local,
        IParameterSymbol => CompletionKind.Parameter,
        _ => CompletionKind.Other,
    };

    private static bool IsGlobals(ISymbol s) => s.ContainingType?.Name == "RecipeGlobals";

    private static string Detail(ISymbol s) => s switch
    {
        INamespaceSymbol ns => "namespace " + ns.ToDisplayString(),
        ITypeSymbol t => t.TypeKind.ToString().ToLowerInvariant() + " " + t.ToDisplayString(),
        IFieldSymbol f => f.Type.ToDisplayString(SymbolDisplayFormat.MinimallyQualifiedFormat),
        IPropertySymbol p => p.Type.ToDisplayString(SymbolDisplayFormat.MinimallyQualifiedFormat),
        ILocalSymbol l => l.Type.ToDisplayString(SymbolDisplayFormat.MinimallyQualifiedFormat),
        IParameterSymbol p => p.Type.ToDisplayString(SymbolDisplayFormat.MinimallyQualifiedFormat),
        _ => s.ToDisplayString(s_detailFormat),
    };
}
