// ─── Interactive API (stable; used by the REPL evaluation host in src/Shell/Repl/) ──────────────────────────
//
//   public sealed class InteractiveSession
//   {
//       public InteractiveSession(PluginSet plugins, RecipeContext context, string? baseDirectory = null, bool useCompileServer = false);
//           // builds the RecipeGlobals (with the plugin globals); the plugin preamble runs before the first submission
//           // that names a plugin global, or at EnsurePreamble (the host calls it after the first reply)
//       public SubmissionResult Submit(string code, CancellationToken cancellationToken = default);
//       public void EnsurePreamble();
//       public IReadOnlyList<Completion> Complete(string code, int caret);   // Roslyn's CompletionService (CodeAssist)
//       public SignatureHelp? Signature(string code, int caret);            // the call the caret is in
//       public string? QuickInfo(string code, int caret);                   // the symbol at the caret
//       public static bool IsCompleteSubmission(string code);
//       public IReadOnlyList<string> Submissions { get; }   // successful ones, in order (for #save / replay)
//       public PluginSet Plugins { get; }
//       public RecipeGlobals Globals { get; }
//       public IReadOnlyList<ScriptDiagnostic> PreambleDiagnostics { get; }  // empty unless the plugin preamble failed
//       public void WarmUp();                                  // warms completion etc. in the background (CodeAssist.WarmSoon)
//       public bool IsScriptAssembly(Assembly a);              // for trimming stack traces
//   }
//   Complete and Submissions do not wait for a running Submit (safe from another thread).
//   public sealed record SubmissionResult(bool Compiled, IReadOnlyList<ScriptDiagnostic> Diagnostics,
//       bool HasValue, object? Value, Exception? Exception, TimeSpan CompileTime, TimeSpan RunTime)
//       { bool Succeeded => Compiled && Exception is null; }
//   public sealed record Completion(string Text, CompletionKind Kind, string Detail, int ReplaceStart, int ReplaceLength);
//   ScriptDiagnostic.Formatted = "file(line,col): error CSxxxx: message" (REPL submissions have no file: "(1,5): error …").
//   Rendering: VirtLab.Shell.Rendering.ValueRenderer.ToRenderable(object?) / .Write(IAnsiConsole, object?);
//   Consoles.Create(TextWriter, isTerminal) gives a Spectre console without ANSI when redirected.
//   Exceptions: ScriptExceptions.Format(result.Exception, session.IsScriptAssembly) → "Type: message\n   at file:line…".
//   PluginSet.Load(new PluginSearchPaths(dirs), ScriptPreamble.ReservedNames(typeof(RecipeGlobals))) loads plugins.
//   Per-submission Ctrl+C token: set context.Cancellation before Submit (scripts see it as `Cancellation`).
//
// Submit runs the code on the calling thread; script output goes straight to Console.Out/Error. Cancellation:
// the token is honoured while compiling and is exposed to the script through the globals (cooperative);
// a loop that ignores it has to be ended by killing the host. A submission that fails to compile or throws
// is not chained: the next one sees the state of the last successful submission.
// ──────────────────────────────────────────────────────────────────────────────────────────────────────────
using System.Diagnostics;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using VirtLab.Shell.Rendering;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Scripting;

public sealed record SubmissionResult(
    bool Compiled,
    IReadOnlyList<ScriptDiagnostic> Diagnostics,
    bool HasValue,
    object? Value,
    Exception? Exception,
    TimeSpan CompileTime,
    TimeSpan RunTime)
{
    public bool Succeeded => Compiled && Exception is null;
    public IEnumerable<ScriptDiagnostic> Errors => Diagnostics.Where(d => d.IsError);
}

/// <summary>A REPL session: submissions chained on the last successful one, all in one script load context.</summary>
public sealed class InteractiveSession
{
    private readonly ScriptCompiler _compiler;
    private readonly SubmissionExecutor _executor;
    private readonly string _sessionId = Guid.NewGuid().ToString("N")[..12];
    private string[] _submissions = []; // replaced, never mutated: readers need no lock
    private readonly object _gate = new();
    private CSharpCompilation? _previous;
    private int _counter;

    // The compile server (Cli/CompileServer) compiles while this process's Roslyn is cold; the chain it needs.
    private readonly bool _useServer;
    private readonly List<(string Name, string Code)> _chain = [];

    /// <param name="useCompileServer">While this process has not compiled anything itself (a cold Roslyn), let the
    /// compile server emit the preamble and submissions (the REPL's first host: its first result is then not a cold
    /// compile). No local compilation is built meanwhile; the first local compile rebuilds the chain from the same
    /// names and code (<see cref="LocalPrevious"/>), so switching to local later is seamless.</param>
    public InteractiveSession(PluginSet plugins, RecipeContext context, string? baseDirectory = null, bool useCompileServer = false)
    {
        _useServer = useCompileServer;
        Plugins = plugins;
        context.Show = v => ValueRenderer.Write(Consoles.Out, v);
        var globals = new RecipeGlobals(context, ScriptPreamble.PluginGlobals(plugins));
        Globals = globals;
        _compiler = new ScriptCompiler(plugins, typeof(RecipeGlobals), baseDirectory ?? Directory.GetCurrentDirectory());
        _executor = new SubmissionExecutor(globals, new ScriptLoadContext(plugins, "virtlab-session-" + _sessionId));
        if (VirtLab.Shell.Cli.StartupTrace.Enabled)
        {
            VirtLab.Shell.Cli.StartupTrace.Mark("session: compiler");
            _ = _compiler.References;
            VirtLab.Shell.Cli.StartupTrace.Mark("session: references");
        }
        Assist = new CodeAssist(_compiler, ScriptPreamble.Source(plugins), () => Submissions, _gate);

        _globalNames = [.. plugins.Loaded.Select(p => p.GlobalName!)];
        _preamblePending = _compiler.Inputs.Preamble is not null;
    }

    // The plugin preamble (one variable per plugin global) joins the chain when a submission first names a global, or
    // once the first submission is done (EnsurePreamble, from the host's work loop after the reply): the first result does not wait
    // for its compile. A submission naming no global means the same before or after it — the plugins' references and
    // namespaces are in every submission's compilation either way — so the order changes nothing a script can see.
    private readonly string[] _globalNames;
    private bool _preamblePending;

    /// <summary>Compiles and runs the plugin preamble now if it has not joined the chain yet.</summary>
    public void EnsurePreamble()
    {
        lock (_gate) EnsurePreambleLocked();
    }

    private void EnsurePreambleLocked()
    {
        if (!_preamblePending) return;
        var preambleName = NextAssemblyName();
        var preambleSource = _compiler.Inputs.Preamble!;
        if (Remote(preambleName, preambleSource) is { } remote)
        {
            PreambleDiagnostics = remote.Diagnostics.Where(d => d.IsError).ToList();
            if (remote.Submission is { } sub)
            {
                _executor.Run(_executor.Context.AddSubmission(sub.Image), sub.TypeName!);
                _chain.Add((preambleName, preambleSource));
            }
        }
        else
        {
            var preamble = _compiler.CreateSubmission(preambleName, ScriptCompiler.Parse(preambleSource), LocalPrevious());
            if (VirtLab.Shell.Cli.StartupTrace.Enabled)
            {
                VirtLab.Shell.Cli.StartupTrace.Mark("session: preamble compilation created");
                _ = preamble.GetDiagnostics(); // binds (again in Emit): only to tell binding from emitting
                VirtLab.Shell.Cli.StartupTrace.Mark("session: preamble bound");
            }
            var (sub, diags) = _compiler.Emit(preamble);
            VirtLab.Shell.Cli.StartupTrace.Mark("session: preamble emitted");
            PreambleDiagnostics = diags.Where(d => d.IsError).ToList();
            if (sub is not null)
            {
                _executor.Run(_executor.Context.AddSubmission(sub.Image), sub.TypeName!);
                _previous = preamble;
                _chain.Add((preambleName, preambleSource));
            }
        }
        // Done (compiled and run, or reported as errors, as a preamble that fails to compile always was); one that threw
        // is tried again by the next submission.
        _preamblePending = false;
        foreach (var d in PreambleDiagnostics) Console.Error.WriteLine($"plugin preamble: {d}");
    }

    // A #load-ed file may name a global the submission's own text does not.
    private bool NamesGlobal(string code) =>
        _globalNames.Length > 0 && (VirtLab.Shell.PluginHost.PluginVocabulary.PullsInCode(code)
                                    || VirtLab.Shell.PluginHost.PluginVocabulary.Identifiers(code).Any(id => Array.IndexOf(_globalNames, id) >= 0));

    /// <summary>The last successful submission's compilation, rebuilt from the chain's code when the compile server
    /// emitted it (same names, sources, references and options: the same symbols the loaded images were emitted from).</summary>
    private CSharpCompilation? LocalPrevious()
    {
        if (_previous is not null || _chain.Count == 0) return _previous;
        CSharpCompilation? previous = null;
        foreach (var (n, c) in _chain) previous = _compiler.CreateSubmission(n, ScriptCompiler.Parse(c), previous);
        return _previous = previous;
    }

    /// <summary>How the last submission was compiled ("server (warm, …)" or "in-process"), for tracing.</summary>
    public string LastCompile { get; private set; } = "nothing compiled";

    /// <summary>The compile server's emit of <paramref name="code"/> on this session's chain, or null: compile here.</summary>
    private VirtLab.Shell.Cli.RemoteSubmission? Remote(string name, string code)
    {
        LastCompile = "in-process";
        if (!_useServer || ScriptCompiler.EmittedLocally) return null;
        var remote = VirtLab.Shell.Cli.CompileServer.TryCompileSubmission(_compiler.Inputs, _compiler.BaseDirectory, [.. _chain, (name, code)], out _);
        LastCompile = remote?.How ?? "in-process";
        return remote;
    }

    public PluginSet Plugins { get; }
    public RecipeGlobals Globals { get; }
    /// <summary>The plugin preamble's errors once it has run (empty before, and when it compiled).</summary>
    public IReadOnlyList<ScriptDiagnostic> PreambleDiagnostics { get; private set; } = [];
    internal CodeAssist Assist { get; }

    /// <summary>The successful submissions in order (the plugin preamble excluded).</summary>
    public IReadOnlyList<string> Submissions => Volatile.Read(ref _submissions);

    public static bool IsCompleteSubmission(string code) => SyntaxFactory.IsCompleteSubmission(ScriptCompiler.Parse(code));

    public SubmissionResult Submit(string code, CancellationToken cancellationToken = default)
    {
        lock (_gate)
        {
            var sw = Stopwatch.StartNew();
            if (string.IsNullOrWhiteSpace(code))
                return new SubmissionResult(true, [], false, null, null, TimeSpan.Zero, TimeSpan.Zero);

            if (_preamblePending && NamesGlobal(code)) EnsurePreambleLocked();
            EmittedSubmission? sub;
            IReadOnlyList<ScriptDiagnostic> diags;
            CSharpCompilation? compilation = null;
            bool hasValue;
            IEnumerable<string>? remoteReferences = null;
            var name = NextAssemblyName();
            try
            {
                if (Remote(name, code) is { } remote)
                {
                    // No local compilation: even parsing here would JIT Roslyn's parser (what the server spares us);
                    // the local chain is rebuilt from the code when this process compiles itself.
                    (sub, diags, hasValue, remoteReferences) = (remote.Submission, remote.Diagnostics, remote.HasValue, remote.References);
                }
                else
                {
                    compilation = _compiler.CreateSubmission(name, ScriptCompiler.Parse(code, "", cancellationToken), LocalPrevious());
                    (sub, diags) = _compiler.Emit(compilation, cancellationToken);
                    hasValue = sub is not null && HasTrailingValue(compilation, compilation.SyntaxTrees.First(t => t.FilePath == ""));
                }
            }
            catch (OperationCanceledException e)
            {
                return new SubmissionResult(false, [], false, null, e, sw.Elapsed, TimeSpan.Zero);
            }
            var compileTime = sw.Elapsed;
            if (sub is null) return new SubmissionResult(false, diags, false, null, null, compileTime, TimeSpan.Zero);

            sw.Restart();
            object? value = null;
            // Assemblies named by #r load on first use from where the compiler found them.
            // (Asking the local compilation would bind its references: what a server compile spares a cold host.)
            foreach (var path in remoteReferences ?? compilation!.DirectiveReferences.OfType<PortableExecutableReference>().Select(r => r.FilePath).OfType<string>())
                _executor.Context.AddReferencePath(path);
            foreach (var path in NuGetMetadataResolver.ClosurePaths) _executor.Context.AddReferencePath(path); // #r "nuget: …" dependencies
            try
            {
                if (sub.TypeName is not null)
                    value = _executor.Run(_executor.Context.AddSubmission(sub.Image), sub.TypeName);
            }
            catch (Exception e)
            {
                return new SubmissionResult(true, diags, false, null, e, compileTime, sw.Elapsed);
            }
            _previous = compilation; // null after a server compile: LocalPrevious rebuilds it
            _chain.Add((name, code));
            Volatile.Write(ref _submissions, [.. _submissions, code]);
            Assist.PrepareSoon();
            return new SubmissionResult(true, diags, hasValue, hasValue ? value : null, null, compileTime, sw.Elapsed);
        }
    }

    // No lock: completion must answer while a submission runs (Submit holds _gate for the whole run); CodeAssist
    // reads the successful submissions (and so the session's state) as they are now.
    public IReadOnlyList<Completion> Complete(string code, int caret) => Assist.Complete(code, caret);
    public SignatureHelp? Signature(string code, int caret) => Assist.Signature(code, caret);
    public string? QuickInfo(string code, int caret) => Assist.QuickInfo(code, caret);

    /// <summary>The public types reachable without qualification (the imported namespaces): what the REPL highlights as types.</summary>
    public IEnumerable<string> TypeNamesInScope()
    {
        var compilation = _compiler.CreateSubmission("virtlab-types", null, null);
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var ns in ScriptPreamble.Imports(Plugins))
        {
            INamespaceSymbol? symbol = compilation.GlobalNamespace;
            foreach (var part in ns.Split('.'))
                symbol = symbol?.GetNamespaceMembers().FirstOrDefault(n => n.Name == part);
            foreach (var type in symbol?.GetTypeMembers() ?? [])
                if (type.DeclaredAccessibility == Accessibility.Public && SyntaxFacts.IsValidIdentifier(type.Name)) names.Add(type.Name);
        }
        return names;
    }

    /// <summary>Warms completion, signature help and quick info on a thread of its own, a few seconds from now (MEF
    /// composition and Roslyn's completion providers take seconds of CPU on a small machine: a standby host must stay
    /// quick to take, and the user typing right after a result should not compete with it).</summary>
    public void WarmUp() => Assist.WarmSoon(TimeSpan.FromSeconds(3));

    // Roslyn's rule: a final expression without a semicolon, of a non-void type, is the submission's value.
    internal static bool HasTrailingValue(CSharpCompilation compilation, SyntaxTree tree)
    {
        if (tree.GetRoot() is not Microsoft.CodeAnalysis.CSharp.Syntax.CompilationUnitSyntax root) return false;
        if (root.Members.LastOrDefault() is not Microsoft.CodeAnalysis.CSharp.Syntax.GlobalStatementSyntax
            { Statement: Microsoft.CodeAnalysis.CSharp.Syntax.ExpressionStatementSyntax { SemicolonToken.IsMissing: true } stmt }) return false;
        var type = compilation.GetSemanticModel(tree).GetTypeInfo(stmt.Expression).Type;
        if (type is null) return stmt.Expression.IsKind(SyntaxKind.NullLiteralExpression); // typeless, but a value
        return type.SpecialType != SpecialType.System_Void;
    }

    private string NextAssemblyName() => $"virtlab-session-{_sessionId}-{Interlocked.Increment(ref _counter)}";

    /// <summary>Whether a stack frame's code belongs to a submission of this session (for trimming stack traces).</summary>
    public bool IsScriptAssembly(System.Reflection.Assembly assembly) => _executor.Context.Owns(assembly);
}
