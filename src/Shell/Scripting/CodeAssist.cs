using System.Collections.Immutable;
using System.Text;
using System.Xml.Linq;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.Completion;
using Microsoft.CodeAnalysis.Tags;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.CSharp.Syntax;
using Microsoft.CodeAnalysis.Host.Mef;
using Microsoft.CodeAnalysis.QuickInfo;
using Microsoft.CodeAnalysis.Text;

namespace VirtLab.Shell.Scripting;

public enum CompletionKind { Keyword, Namespace, Type, Method, ExtensionMethod, Property, Field, Event, Variable, Global, Local, Parameter, EnumMember, Other }

/// <summary>One completion: replace [ReplaceStart, ReplaceStart+ReplaceLength) of the input with <see cref="Text"/>.
/// <see cref="Display"/> is what a menu shows (<c>List&lt;&gt;</c>, <c>passes:</c>); <see cref="Detail"/> the item's
/// signature or type and <see cref="Doc"/> its doc summary (both for the first items only, see <see cref="CodeAssist"/>).</summary>
public sealed record Completion(string Text, CompletionKind Kind, string Detail, int ReplaceStart, int ReplaceLength,
    string Display = "", string Doc = "");

/// <summary>The calls the caret is in: every overload, the one that fits, and the argument being typed.</summary>
public sealed record SignatureHelp(IReadOnlyList<string> Signatures, int Active, string? Parameter, string ParameterDoc, string Doc);

/// <summary>
/// Completion (Roslyn's <see cref="CompletionService"/>), signature help and quick info over the session: an
/// <see cref="AdhocWorkspace"/> holds one script project per successful submission, each chained on the one before
/// (the workspace makes a project reference between submissions the previous-submission link), with the same
/// references, options and globals type as the real submissions, and one more project for the code being typed.
/// Roslyn's compilations of earlier submissions stay cached in the workspace, so a request binds only the text typed.
/// </summary>
internal sealed class CodeAssist
{
    /// <summary>Items whose description (signature and doc summary) is computed: what a menu can show at once.</summary>
    private const int Described = 16;
    private const int MaxItems = 3000; // "new " offers every type in scope; Dictionary must be there before anything is typed

    private readonly ScriptCompiler _compiler;
    private readonly Func<IReadOnlyList<string>> _submissions;
    private readonly string? _preamble;
    private readonly object _gate = new();
    private AdhocWorkspace? _workspace; // made on first use: MEF composition costs, and must not delay the first result
    private ProjectId? _last;          // the newest submission's project
    private int _chained;              // user submissions in the chain
    private DocumentId? _current;      // the document being typed, chained on _last

    private static readonly Lazy<MefHostServices> Host = new(() => MefHostServices.Create(MefHostServices.DefaultAssemblies));

    private readonly object _submitGate;

    /// <param name="submitGate">Held by the session while it compiles and runs a submission: the binding after a
    /// submission (<see cref="PrepareSoon"/>) takes it too, so it never compiles beside the next submission.</param>
    public CodeAssist(ScriptCompiler compiler, string? preamble, Func<IReadOnlyList<string>> submissions, object? submitGate = null)
    {
        _compiler = compiler;
        _preamble = preamble;
        _submissions = submissions;
        _submitGate = submitGate ?? new object();
    }

    // The last list Roslyn made and where: typing more of the same name only filters it again (Roslyn's list for a
    // position does not depend on the part of the name already typed).
    private (string Key, CompletionList List, Document Document, CompletionService Service)? _last_;

    public IReadOnlyList<Completion> Complete(string code, int caret, CancellationToken ct = default)
    {
        caret = Math.Clamp(caret, 0, code.Length);
        int start = caret, end = caret;
        while (start > 0 && IsNamePart(code[start - 1])) start--;
        while (end < code.Length && IsNamePart(code[end])) end++;
        var key = $"{_chained}\0{code[..start]}\0{code[end..]}";

        CompletionList list;
        Document document;
        CompletionService service;
        if (_last_ is { } last && last.Key == key && SubmissionsUnchanged())
            (list, document, service) = (last.List, last.Document, last.Service);
        else
        {
            document = Document(code);
            service = CompletionService.GetService(document)!;
            list = Completions(service, document, caret, ct);
            _last_ = (key, list, document, service);
        }
        if (list.ItemsList.Count == 0) return [];
        var span = list.Span.Start == start ? TextSpan.FromBounds(start, end) : list.Span;
        var filter = code[span.Start..Math.Clamp(caret, span.Start, code.Length)];

        // Roslyn hands the whole list for the context; an editor filters it by what is typed. Prefix first (exact
        // case first), then camel humps ("SB" → StringBuilder), keeping Roslyn's own order (SortText) within each.
        var ranked = new List<(CompletionItem Item, int Rank)>();
        foreach (var item in list.ItemsList)
            if (Rank(item.FilterText, filter) is var r and >= 0) ranked.Add((item, r));
        var items = ranked
            .OrderBy(x => x.Rank)
            .ThenBy(x => -x.Item.Rules.MatchPriority)
            .ThenBy(x => x.Item.SortText, StringComparer.OrdinalIgnoreCase)
            .ThenBy(x => x.Item.DisplayText, StringComparer.Ordinal)
            .Take(MaxItems).ToList();
        if (items.Count == 0) return [];

        var model = document.GetSemanticModelAsync(ct).GetAwaiter().GetResult()!;
        var scope = Scope(model, list.Span.Start, ct);
        var result = new List<Completion>(items.Count);
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var roslynDescriptions = 0;
        foreach (var (item, _) in items)
        {
            var text = InsertionText(item);
            if (!seen.Add(text + "\0" + item.DisplayTextSuffix)) continue;
            string detail = "", doc = "";
            var symbols = result.Count < Described || IsFieldLike(item) ? Lookup(model, scope, list.Span.Start, item) : [];
            if (result.Count < Described)
            {
                if (symbols.Count > 0) (detail, doc) = Describe(symbols);
                else if (item.Tags.Contains(WellKnownTags.Keyword)) detail = "keyword";
                else if (roslynDescriptions++ < 4) // named arguments and the like: Roslyn's description (slower)
                    (detail, doc) = SplitDescription(service.GetDescriptionAsync(document, item, ct).GetAwaiter().GetResult()?.Text ?? "");
            }
            result.Add(new Completion(text, KindOf(item, symbols.FirstOrDefault()), detail, span.Start, span.Length,
                item.DisplayTextPrefix + item.DisplayText + item.DisplayTextSuffix, doc));
        }
        return result;
    }

    private bool SubmissionsUnchanged() => _submissions().Count == _chained;

    /// <summary>Roslyn's list at <paramref name="caret"/>, without the providers a REPL has no use for: types and
    /// extension methods from namespaces not imported (accepting one would need a <c>using</c> the editor does not
    /// add; they were 3,300 of the 4,000 items for a name in scope and a third of the time), snippets, name suggestions
    /// for declarations, regex and date-format completion in strings.</summary>
    private static CompletionList Completions(CompletionService service, Document document, int caret, CancellationToken ct)
    {
        if (ReplOptions.Value is { } options)
        {
            try
            {
                var task = (Task<CompletionList>)options.Method.Invoke(service,
                    [document, caret, options.Options, document.Project.Solution.Options, default(CompletionTrigger), null, ct])!;
                return task.GetAwaiter().GetResult();
            }
            catch (System.Reflection.TargetInvocationException e) when (e.InnerException is OperationCanceledException oce) { throw oce; }
        }
        return service.GetCompletionsAsync(document, caret, cancellationToken: ct).GetAwaiter().GetResult();
    }

    /// <summary>The options for <see cref="Completions"/>: Roslyn's <c>CompletionOptions</c> and the overload that takes
    /// them are internal, so both are found by reflection; null (Roslyn's defaults, slower) if a Roslyn update moved them.</summary>
    private static readonly Lazy<(System.Reflection.MethodInfo Method, object Options)?> ReplOptions = new(() =>
    {
        const System.Reflection.BindingFlags Any = System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.NonPublic;
        try
        {
            var type = typeof(CompletionService).Assembly.GetType("Microsoft.CodeAnalysis.Completion.CompletionOptions");
            var method = type is null ? null : typeof(CompletionService).GetMethods(Any | System.Reflection.BindingFlags.Instance)
                .FirstOrDefault(m => m.Name == nameof(CompletionService.GetCompletionsAsync) && m.GetParameters() is { Length: 7 } p
                    && p[0].ParameterType == typeof(Document) && p[2].ParameterType == type && p[4].ParameterType == typeof(CompletionTrigger));
            var defaults = type?.GetField("Default", Any | System.Reflection.BindingFlags.Static)?.GetValue(null)
                ?? type?.GetProperty("Default", Any | System.Reflection.BindingFlags.Static)?.GetValue(null);
            if (type is null || method is null || defaults is null) return null;
            var options = type.GetMethod("<Clone>$")!.Invoke(defaults, [])!; // a record: a copy to set the init-only properties on
            void Set(string name, Func<Type, object> value)
            {
                if (type.GetProperty(name) is { CanWrite: true } p) p.SetValue(options, value(p.PropertyType));
            }
            Set("ShowItemsFromUnimportedNamespaces", _ => false);
            Set("SnippetsBehavior", t => Enum.Parse(t, "NeverInclude"));
            Set("ShowNewSnippetExperienceFeatureFlag", _ => false);
            Set("ShowNameSuggestions", _ => false);
            Set("ProvideRegexCompletions", _ => false);
            Set("ProvideDateAndTimeCompletions", _ => false);
            return (method, options);
        }
        catch (Exception e) when (e is ArgumentException or System.Reflection.TargetInvocationException or InvalidCastException or NullReferenceException)
        {
            return null;
        }
    });

    private static bool IsNamePart(char c) => char.IsLetterOrDigit(c) || c == '_';

    private static bool IsFieldLike(CompletionItem item) =>
        item.Tags.Contains(WellKnownTags.Field) || item.Tags.Contains(WellKnownTags.Property) || item.Tags.Contains(WellKnownTags.Constant);

    /// <summary>What the names complete in: after <c>x.</c> the type or namespace <c>x</c> is (and whether it is an
    /// instance); elsewhere nothing (names in scope).</summary>
    private static (INamespaceOrTypeSymbol? Container, bool Instance) Scope(SemanticModel model, int position, CancellationToken ct)
    {
        var token = model.SyntaxTree.GetRoot(ct).FindToken(Math.Max(0, position - 1));
        if (!token.IsKind(SyntaxKind.DotToken) || token.Span.End > position) return (null, false);
        ExpressionSyntax? left = token.Parent switch
        {
            MemberAccessExpressionSyntax ma => ma.Expression,
            QualifiedNameSyntax qn => qn.Left,
            MemberBindingExpressionSyntax mb => mb.FirstAncestorOrSelf<ConditionalAccessExpressionSyntax>()?.Expression,
            _ => null,
        };
        if (left is null) return (null, false);
        var symbol = model.GetSymbolInfo(left, ct).Symbol;
        if (symbol is INamespaceOrTypeSymbol container && left is not InvocationExpressionSyntax) return (container, false);
        return (model.GetTypeInfo(left, ct).Type, true);
    }

    private static IReadOnlyList<ISymbol> Lookup(SemanticModel model, (INamespaceOrTypeSymbol? Container, bool Instance) scope, int position, CompletionItem item)
    {
        var name = item.FilterText;
        if (item.DisplayTextSuffix == ":") return []; // a named argument: not a name in scope
        var found = scope.Container is null
            ? model.LookupSymbols(position, name: name)
            : scope.Instance && scope.Container is ITypeSymbol type
                ? model.LookupSymbols(position, type, name, includeReducedExtensionMethods: true)
                : model.LookupSymbols(position, scope.Container, name);
        return found;
    }

    private static readonly SymbolDisplayFormat TypeFormat = SymbolDisplayFormat.MinimallyQualifiedFormat;

    /// <summary>The item's signature or type, with the number of other overloads, and its doc summary.</summary>
    private static (string Detail, string Doc) Describe(IReadOnlyList<ISymbol> symbols)
    {
        var s = symbols[0];
        var detail = s switch
        {
            INamespaceSymbol ns => "namespace " + ns.ToDisplayString(),
            ITypeSymbol t => (t.IsRecord ? "record " : "") + t.TypeKind.ToString().ToLowerInvariant() + " " + t.ToDisplayString(),
            IFieldSymbol { ContainingType.IsScriptClass: true } f => f.Type.ToDisplayString(TypeFormat) + " " + f.Name,
            IFieldSymbol f => (f.IsConst ? "const " : "") + f.ToDisplayString(TypeFormat), // "int Workload.MaxPasses"
            IPropertySymbol p => p.ToDisplayString(SignatureFormat),
            ILocalSymbol l => l.Type.ToDisplayString(TypeFormat) + " " + l.Name,
            IParameterSymbol p => p.Type.ToDisplayString(TypeFormat) + " " + p.Name,
            _ => s.ToDisplayString(SignatureFormat),
        };
        var overloads = symbols.Count(x => x is IMethodSymbol) - 1;
        if (overloads > 0) detail += $" (+ {overloads} overload{(overloads == 1 ? "" : "s")})";
        return (detail, Summary(s is IMethodSymbol { ReducedFrom: { } from } ? from : s));
    }

    // Doc summaries of referenced assemblies' symbols (the framework's, the SDK's) by documentation id: the XML is
    // read and parsed once, not on every key. Symbols of the session's own code are cheap and may change: not kept.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> Summaries = new(StringComparer.Ordinal);

    private static string Summary(ISymbol symbol)
    {
        var id = symbol.Locations.Length > 0 && symbol.Locations.All(l => l.IsInMetadata)
            ? symbol.OriginalDefinition.GetDocumentationCommentId() : null;
        if (id is null) return Normalize(DocXml(symbol)?.Element("summary"));
        var key = symbol.ContainingAssembly?.Identity.Name + "|" + id;
        return Summaries.GetOrAdd(key, _ => Normalize(DocXml(symbol)?.Element("summary")));
    }

    /// <summary>Signature help at <paramref name="caret"/>: the innermost call or <c>new</c> whose parentheses hold the caret.</summary>
    public SignatureHelp? Signature(string code, int caret, CancellationToken ct = default)
    {
        caret = Math.Clamp(caret, 0, code.Length);
        var document = Document(code);
        var root = document.GetSyntaxRootAsync(ct).GetAwaiter().GetResult()!;
        var token = root.FindToken(Math.Max(0, caret - 1));
        var args = token.Parent?.AncestorsAndSelf().OfType<BaseArgumentListSyntax>()
            .FirstOrDefault(a => a.OpenBracketOrParen().Span.End <= caret && (a.CloseBracketOrParen().IsMissing || caret <= a.CloseBracketOrParen().SpanStart));
        if (args?.Parent is null) return null;
        var model = document.GetSemanticModelAsync(ct).GetAwaiter().GetResult()!;

        IReadOnlyList<IMethodSymbol> overloads;
        IMethodSymbol? chosen;
        switch (args.Parent)
        {
            case InvocationExpressionSyntax call:
                overloads = model.GetMemberGroup(call.Expression, ct).OfType<IMethodSymbol>().ToList();
                chosen = model.GetSymbolInfo(call, ct).Symbol as IMethodSymbol;
                break;
            case BaseObjectCreationExpressionSyntax creation:
                var type = model.GetTypeInfo(creation, ct).Type as INamedTypeSymbol;
                overloads = type?.InstanceConstructors.Where(c => model.IsAccessible(caret, c)).ToList() ?? [];
                chosen = model.GetSymbolInfo(creation, ct).Symbol as IMethodSymbol;
                break;
            case ElementAccessExpressionSyntax element:
                overloads = model.GetIndexerGroup(element.Expression, ct).Select(p => p.GetMethod).OfType<IMethodSymbol>().ToList();
                chosen = (model.GetSymbolInfo(element, ct).Symbol as IPropertySymbol)?.GetMethod;
                break;
            default:
                return null;
        }
        if (overloads.Count == 0) return null;

        var index = args.Arguments.GetSeparators().Count(s => s.SpanStart < caret);
        var argument = index < args.Arguments.Count ? args.Arguments[index] : null;
        var named = argument?.NameColon?.Name.Identifier.ValueText;
        // The overload that binds, else the first one with room for the argument being typed (and its name).
        var active = chosen is null ? -1 : overloads.ToList().FindIndex(m => SymbolEqualityComparer.Default.Equals(m, chosen));
        if (active < 0)
            active = Math.Max(0, overloads.ToList().FindIndex(m =>
                (named is null ? m.Parameters.Length > index || m.Parameters.LastOrDefault()?.IsParams == true
                               : m.Parameters.Any(p => p.Name == named))));
        var method = overloads[active];
        var parameter = named is not null ? method.Parameters.FirstOrDefault(p => p.Name == named)
            : index < method.Parameters.Length ? method.Parameters[index]
            : method.Parameters.LastOrDefault(p => p.IsParams);
        var docSymbol = method.MethodKind == MethodKind.PropertyGet ? method.AssociatedSymbol! : method;
        var xml = DocXml(docSymbol);
        return new SignatureHelp(
            overloads.Select(m => m.MethodKind == MethodKind.PropertyGet && m.AssociatedSymbol is { } p
                ? p.ToDisplayString(SignatureFormat) : m.ToDisplayString(SignatureFormat)).ToList(),
            active, parameter?.Name,
            parameter is null ? "" : Normalize(xml?.Elements("param").FirstOrDefault(e => (string?)e.Attribute("name") == parameter.Name)),
            Normalize(xml?.Element("summary")));
    }

    /// <summary>Quick info for the symbol at <paramref name="caret"/> (or just before it): its declaration and doc, as text.</summary>
    public string? QuickInfo(string code, int caret, CancellationToken ct = default)
    {
        caret = Math.Clamp(caret, 0, code.Length);
        var document = Document(code);
        var service = QuickInfoService.GetService(document)!;
        var info = service.GetQuickInfoAsync(document, caret, ct).GetAwaiter().GetResult();
        if ((info is null || info.Sections.IsEmpty) && caret > 0)
            info = service.GetQuickInfoAsync(document, caret - 1, ct).GetAwaiter().GetResult(); // caret right after a word
        if (info is null || info.Sections.IsEmpty) return null;
        return string.Join("\n", info.Sections.Select(s => s.Text.Trim()).Where(t => t.Length > 0));
    }

    private int _warming;
    private readonly object _warmGate = new();
    private bool _warmed;

    /// <summary>Warms in the background after <paramref name="delay"/> (once): the host's standby does it for the process
    /// (MEF composition, JIT of Roslyn's completion providers), so a session it later serves answers its first Tab quickly.</summary>
    public void WarmSoon(TimeSpan delay)
    {
        if (Interlocked.Exchange(ref _warming, 1) != 0) return;
        // A thread of its own, below the evaluation's priority: it blocks on Roslyn's tasks, which need the pool.
        new Thread(() =>
        {
            Thread.Sleep(delay);
            try { lock (_warmGate) if (!_warmed) WarmUp(); }
            catch (Exception e) { Console.Error.WriteLine($"virtlab host: completion warm-up failed: {e.Message}"); }
        }) { IsBackground = true, Name = "virtlab-assist-warm", Priority = ThreadPriority.BelowNormal }.Start();
    }

    private int _preparing; // 0 idle, 1 running, 2 running and another submission came

    /// <summary>After a submission: chains it into the workspace and binds a completion over it in the background, so
    /// the next key does not pay for compiling the new submission's project (one run at a time; a replay's burst of
    /// submissions makes one more run, not one each).</summary>
    public void PrepareSoon()
    {
        if (_workspace is null) return; // nothing asked yet: the first request (or the warm-up) builds the chain
        if (Interlocked.Exchange(ref _preparing, 2) != 0) return;
        new Thread(() =>
        {
            do
            {
                Volatile.Write(ref _preparing, 1);
                try
                {
                    lock (_submitGate)
                    {
                        var document = Document("");
                        Completions(CompletionService.GetService(document)!, document, 0, CancellationToken.None);
                    }
                }
                catch (Exception e) { Console.Error.WriteLine($"virtlab host: completion preparation failed: {e.Message}"); }
            } while (Interlocked.CompareExchange(ref _preparing, 0, 1) != 1);
        }) { IsBackground = true, Name = "virtlab-assist-prepare", Priority = ThreadPriority.BelowNormal }.Start();
    }

    /// <summary>Binds a throwaway completion, signature help and quick info so the first real ones are warm.</summary>
    public void WarmUp()
    {
        lock (_warmGate) _warmed = true; // one warm-up per session: the background one stands down
        // Each context runs different providers (members, names in scope, named arguments, object creation): JIT them all.
        foreach (var code in (string[])["Args.", "Sys", "var s = \"\"; s.Le", "Math.Max(va", "var l = new Lis", "Args.Where(a => a.Le"])
            Complete(code, code.Length);
        Signature("Math.Max(1, ", 12);
        QuickInfo("Args", 2);
    }

    // ---- the workspace ----------------------------------------------------------------------------------

    /// <summary>The document for <paramref name="code"/>, chained on every successful submission so far.</summary>
    private Document Document(string code)
    {
        lock (_gate)
        {
            if (_workspace is null)
            {
                _workspace = new AdhocWorkspace(Host.Value);
                if (_preamble is not null) _last = AddSubmission(_preamble, null);
            }
            var submissions = _submissions();
            if (submissions.Count < _chained) throw new InvalidOperationException("submissions only grow"); // a reset makes a new session
            if (submissions.Count > _chained || _current is null)
            {
                for (; _chained < submissions.Count; _chained++) _last = AddSubmission(submissions[_chained], _last);
                if (_current is not null) _workspace!.TryApplyChanges(_workspace.CurrentSolution.RemoveProject(_current.ProjectId));
                var project = AddProject("virtlab-assist", _last);
                _current = DocumentId.CreateNewId(project);
                _workspace!.TryApplyChanges(_workspace.CurrentSolution.AddDocument(DocumentInfo.Create(_current, "input.csx",
                    sourceCodeKind: SourceCodeKind.Script, loader: TextLoader.From(TextAndVersion.Create(SourceText.From(""), VersionStamp.Create())))));
            }
            // A fork of the solution per request: the earlier submissions' compilations are shared with it.
            return _workspace.CurrentSolution.WithDocumentText(_current, SourceText.From(code, Encoding.UTF8)).GetDocument(_current)!;
        }
    }

    private ProjectId AddSubmission(string code, ProjectId? previous)
    {
        var project = AddProject("virtlab-submission", previous);
        _workspace!.TryApplyChanges(_workspace.CurrentSolution.AddDocument(DocumentInfo.Create(DocumentId.CreateNewId(project), "submission.csx",
            sourceCodeKind: SourceCodeKind.Script, loader: TextLoader.From(TextAndVersion.Create(SourceText.From(code, Encoding.UTF8), VersionStamp.Create())))));
        return project;
    }

    private ProjectId AddProject(string name, ProjectId? previous)
    {
        var id = ProjectId.CreateNewId(name);
        var info = ProjectInfo.Create(id, VersionStamp.Create(), name, name + "-" + Guid.NewGuid().ToString("N")[..8], LanguageNames.CSharp,
            compilationOptions: _compiler.Options, parseOptions: ScriptCompiler.ParseOptions,
            metadataReferences: _compiler.References,
            projectReferences: previous is null ? [] : [new ProjectReference(previous)],
            isSubmission: true, hostObjectType: _compiler.GlobalsType);
        _workspace!.TryApplyChanges(_workspace.CurrentSolution.AddProject(info));
        return id;
    }

    // ---- items ------------------------------------------------------------------------------------------

    /// <summary>0: prefix in the same case, 1: prefix in another case, 2: camel humps or a later word; -1: no match.</summary>
    internal static int Rank(string candidate, string typed)
    {
        if (typed.Length == 0) return 0;
        if (candidate.StartsWith(typed, StringComparison.Ordinal)) return 0;
        if (candidate.StartsWith(typed, StringComparison.OrdinalIgnoreCase)) return 1;
        return CamelHumps(candidate, typed) ? 2 : -1;
    }

    /// <summary>Each capital typed starts a hump of the candidate's, in a row from any hump: "SB", "StrBu", "Builder" for StringBuilder.</summary>
    private static bool CamelHumps(string candidate, string typed)
    {
        if (!char.IsUpper(typed[0])) return false;
        var humps = Split(candidate);
        var parts = Split(typed);
        for (var first = 0; first + parts.Count <= humps.Count; first++)
        {
            var all = true;
            for (var i = 0; i < parts.Count && all; i++)
                all = humps[first + i].StartsWith(parts[i], StringComparison.OrdinalIgnoreCase);
            if (all) return true;
        }
        return false;

        static List<string> Split(string s)
        {
            var list = new List<string>();
            var start = 0;
            for (var i = 1; i <= s.Length; i++)
                if (i == s.Length || char.IsUpper(s[i])) { list.Add(s[start..i]); start = i; }
            return list;
        }
    }

    private static string InsertionText(CompletionItem item)
    {
        if (item.Properties.TryGetValue("InsertionText", out var insertion) && !string.IsNullOrEmpty(insertion)) return insertion;
        // Named arguments ("passes:") and similar: the suffix is part of what is typed; "<>" of a generic is not.
        return item.DisplayTextSuffix == ":" ? item.DisplayText + ":" : item.DisplayText;
    }

    private CompletionKind KindOf(CompletionItem item, ISymbol? symbol)
    {
        var tags = item.Tags;
        if (tags.Contains(WellKnownTags.Keyword)) return CompletionKind.Keyword;
        if (tags.Contains(WellKnownTags.Namespace)) return CompletionKind.Namespace;
        if (tags.Contains(WellKnownTags.ExtensionMethod)) return CompletionKind.ExtensionMethod;
        if (tags.Contains(WellKnownTags.Method)) return CompletionKind.Method;
        if (tags.Contains(WellKnownTags.EnumMember)) return CompletionKind.EnumMember;
        if (tags.Contains(WellKnownTags.Local) || tags.Contains(WellKnownTags.RangeVariable)) return CompletionKind.Local;
        if (tags.Contains(WellKnownTags.Parameter)) return CompletionKind.Parameter;
        if (tags.Contains(WellKnownTags.Event)) return CompletionKind.Event;
        if (tags.Contains(WellKnownTags.Class) || tags.Contains(WellKnownTags.Structure) || tags.Contains(WellKnownTags.Interface)
            || tags.Contains(WellKnownTags.Enum) || tags.Contains(WellKnownTags.Delegate) || tags.Contains(WellKnownTags.TypeParameter))
            return CompletionKind.Type;
        if (IsFieldLike(item))
        {
            // A variable of an earlier submission is a field of its script class; a script global, a RecipeGlobals property.
            if (symbol is IFieldSymbol { ContainingType.IsScriptClass: true }) return CompletionKind.Variable;
            if (symbol is IPropertySymbol p && p.ContainingType?.Name == _compiler.GlobalsType.Name) return CompletionKind.Global;
            return tags.Contains(WellKnownTags.Property) ? CompletionKind.Property : CompletionKind.Field;
        }
        return CompletionKind.Other;
    }

    /// <summary>Roslyn's description: the signature on the first line, the doc summary after it.</summary>
    private static (string Detail, string Doc) SplitDescription(string text)
    {
        var nl = text.IndexOf('\n');
        return nl < 0 ? (text.Trim(), "") : (text[..nl].Trim(), text[(nl + 1)..].Trim());
    }

    // ---- docs ------------------------------------------------------------------------------------------

    private static readonly SymbolDisplayFormat SignatureFormat = SymbolDisplayFormat.MinimallyQualifiedFormat
        .WithMemberOptions(SymbolDisplayMemberOptions.IncludeParameters | SymbolDisplayMemberOptions.IncludeType | SymbolDisplayMemberOptions.IncludeContainingType)
        .WithParameterOptions(SymbolDisplayParameterOptions.IncludeType | SymbolDisplayParameterOptions.IncludeName
                              | SymbolDisplayParameterOptions.IncludeDefaultValue | SymbolDisplayParameterOptions.IncludeParamsRefOut);

    private static XElement? DocXml(ISymbol symbol)
    {
        var xml = symbol.GetDocumentationCommentXml(expandIncludes: true);
        if (string.IsNullOrWhiteSpace(xml) && symbol.OriginalDefinition is { } original && !SymbolEqualityComparer.Default.Equals(original, symbol))
            xml = original.GetDocumentationCommentXml(expandIncludes: true);
        if (string.IsNullOrWhiteSpace(xml)) return null;
        try { return XElement.Parse(xml); }
        catch (System.Xml.XmlException) { return null; }
    }

    /// <summary>A doc element as one line of text: &lt;see cref="T:X.Y"/&gt; as Y, &lt;paramref/&gt; as its name, spaces collapsed.</summary>
    private static string Normalize(XElement? element)
    {
        if (element is null) return "";
        var sb = new StringBuilder();
        foreach (var node in element.Nodes())
        {
            switch (node)
            {
                case XText t: sb.Append(t.Value); break;
                case XElement e when e.Attribute("cref") is { } cref: sb.Append(cref.Value[(cref.Value.LastIndexOf('.') + 1)..]); break;
                case XElement e when e.Attribute("name") is { } name: sb.Append(name.Value); break;
                case XElement e when e.Attribute("langword") is { } word: sb.Append(word.Value); break;
                case XElement e: sb.Append(Normalize(e)); break;
            }
        }
        return string.Join(' ', sb.ToString().Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries));
    }
}

internal static class ArgumentListExtensions
{
    public static SyntaxToken OpenBracketOrParen(this BaseArgumentListSyntax list) => list switch
    {
        ArgumentListSyntax a => a.OpenParenToken,
        BracketedArgumentListSyntax b => b.OpenBracketToken,
        _ => default,
    };

    public static SyntaxToken CloseBracketOrParen(this BaseArgumentListSyntax list) => list switch
    {
        ArgumentListSyntax a => a.CloseParenToken,
        BracketedArgumentListSyntax b => b.CloseBracketToken,
        _ => default,
    };
}
