using System.Collections.Immutable;
using System.Globalization;
using System.Text;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using Microsoft.CodeAnalysis.Emit;
using Microsoft.CodeAnalysis.Scripting;
using Microsoft.CodeAnalysis.Text;
using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Scripting;

/// <summary>A compile diagnostic; <see cref="Formatted"/> is <c>file(line,col): error CSxxxx: message</c> (1-based).</summary>
public sealed record ScriptDiagnostic(string Id, bool IsError, string Message, string File, int Line, int Column, string Formatted)
{
    public override string ToString() => Formatted;
}

/// <summary>One emitted submission: its image and the metadata name of its script class.</summary>
public sealed record EmittedSubmission(string AssemblyName, string? TypeName, byte[] Image);

/// <summary>
/// Builds script compilations with <see cref="CSharpCompilation.CreateScriptCompilation"/>: the reference set
/// (framework + SDK + Spectre.Console + Iced + loaded plugins), the default imports, #load / #r resolution
/// relative to the script, and emission with an embedded PDB so runtime stack traces carry file:line.
/// </summary>
public sealed class ScriptCompiler
{
    public static readonly CSharpParseOptions ParseOptions =
        new(LanguageVersion.Latest, DocumentationMode.None, SourceCodeKind.Script);

    private static readonly EmitOptions EmitOpts = new(debugInformationFormat: DebugInformationFormat.Embedded);
    private static ImmutableArray<MetadataReference>? _baseReferences;
    private static readonly object Gate = new();

    public ScriptCompiler(PluginSet plugins, Type globalsType, string baseDirectory)
        : this(CompileInputs.From(plugins), globalsType, baseDirectory) => Plugins = plugins;

    /// <summary>From plain inputs (plugin paths, imports, preamble): what the compile server gets from a client, which
    /// has loaded the plugins itself.</summary>
    public ScriptCompiler(CompileInputs inputs, Type globalsType, string baseDirectory, Func<string, MetadataReference>? reference = null)
    {
        Plugins = PluginSet.Empty;
        Inputs = inputs;
        GlobalsType = globalsType;
        BaseDirectory = baseDirectory;
        // Made at first use: a REPL host whose compiles go to the compile server never needs them (~0.1 s on 2 cores).
        _references = new(() => BaseReferences(globalsType).AddRange(inputs.PluginPaths.Select(reference ?? Reference)));
        Options = new CSharpCompilationOptions(
                OutputKind.DynamicallyLinkedLibrary,
                usings: inputs.Imports,
                optimizationLevel: OptimizationLevel.Release,
                allowUnsafe: true,
                concurrentBuild: false, // one submission: threads cost more than they save
                sourceReferenceResolver: ScriptSourceResolver.Default.WithBaseDirectory(baseDirectory),
                metadataReferenceResolver: new NuGetMetadataResolver(ScriptMetadataResolver.Default.WithBaseDirectory(baseDirectory)))
            .WithSpecificDiagnosticOptions([
                new("CS1701", ReportDiagnostic.Suppress), new("CS1702", ReportDiagnostic.Suppress), new("CS1705", ReportDiagnostic.Suppress)]);
    }

    /// <summary>Whether this process has emitted a submission (its Roslyn is warm): until then a REPL host may let the
    /// compile server emit for it.</summary>
    public static bool EmittedLocally { get; private set; }

    public PluginSet Plugins { get; }
    public CompileInputs Inputs { get; }
    public Type GlobalsType { get; }
    public string BaseDirectory { get; }
    private readonly Lazy<ImmutableArray<MetadataReference>> _references;
    public ImmutableArray<MetadataReference> References => _references.Value;
    public CSharpCompilationOptions Options { get; }

    public static SyntaxTree Parse(string code, string path = "", CancellationToken ct = default) =>
        CSharpSyntaxTree.ParseText(SourceText.From(code, Encoding.UTF8), ParseOptions, path, ct);

    public CSharpCompilation CreateSubmission(string assemblyName, SyntaxTree? tree, CSharpCompilation? previous) =>
        // No returnType: it defaults to object as the references define it (typeof(object) names System.Private.CoreLib,
        // which the reference pack does not hold).
        CSharpCompilation.CreateScriptCompilation(assemblyName, tree, References, Options, previous,
            returnType: null, globalsType: GlobalsType);

    /// <summary>The plugin preamble as the first submission of a chain (null without plugins).</summary>
    public CSharpCompilation? CreatePreamble(string assemblyName) =>
        Inputs.Preamble is { } src ? CreateSubmission(assemblyName, Parse(src), null) : null;

    /// <summary>Emits; on errors returns null image and the error diagnostics.</summary>
    public (EmittedSubmission? Submission, IReadOnlyList<ScriptDiagnostic> Diagnostics) Emit(CSharpCompilation compilation, CancellationToken ct = default)
    {
        using var pe = new MemoryStream();
        var result = compilation.Emit(pe, options: EmitOpts, cancellationToken: ct);
        var diags = Format(result.Diagnostics);
        // A submission with nothing to run (only usings or #r) "fails" to emit without a single error: it still
        // chains, so its usings and references apply to the next one.
        if (!result.Success && !result.Diagnostics.Any(d => d.Severity == DiagnosticSeverity.Error))
            return (new EmittedSubmission(compilation.AssemblyName!, null, []), diags);
        if (!result.Success) return (null, diags);
        EmittedLocally = true;
        var entry = compilation.GetEntryPoint(ct)!;
        return (new EmittedSubmission(compilation.AssemblyName!, entry.ContainingType.MetadataName, ScriptOptimization.MarkAggressiveOptimization(pe.ToArray())), diags);
    }

    public static IReadOnlyList<ScriptDiagnostic> Format(IEnumerable<Diagnostic> diagnostics) =>
        diagnostics.Where(d => d.Severity >= DiagnosticSeverity.Warning && !d.IsSuppressed)
            .OrderBy(d => d.Severity == DiagnosticSeverity.Error ? 0 : 1)
            .ThenBy(d => d.Location.SourceTree?.FilePath, StringComparer.Ordinal).ThenBy(d => d.Location.SourceSpan.Start)
            .Select(ToScriptDiagnostic).ToList();

    public static ScriptDiagnostic ToScriptDiagnostic(Diagnostic d)
    {
        var span = d.Location.GetMappedLineSpan();
        var file = d.Location.IsInSource ? span.Path ?? "" : "";
        int line = span.StartLinePosition.Line + 1, col = span.StartLinePosition.Character + 1;
        var sev = d.Severity == DiagnosticSeverity.Error ? "error" : "warning";
        var message = d.GetMessage(CultureInfo.InvariantCulture);
        // "Vm.Create(64)": a bare number is not a Size; say how sizes are written.
        if (d.Id is "CS1503" or "CS0029" or "CS0266" && message.Contains("to 'VirtLab.Sdk.Measure.Size'", StringComparison.Ordinal)
            && (message.Contains("'int'", StringComparison.Ordinal) || message.Contains("'long'", StringComparison.Ordinal)))
            message += " (sizes take a unit: 64.MiB(), 4.KiB(), 4096.Bytes() or Size.Parse(\"512M\"))";
        // #r "nuget: …" that could not be restored: say why instead of "metadata file could not be found".
        // ("Metadata file 'nuget: X, 1.0' could not be found": the reference is between the first and last quote.)
        if (d.Id == "CS0006" && message.IndexOf('\'') is var q0 && message.LastIndexOf('\'') is var q1 && q1 > q0 + 1
            && message[(q0 + 1)..q1] is var r && NuGetMetadataResolver.IsNuGet(r))
            message = $"#r \"{r}\": " + (NuGetMetadataResolver.ErrorFor(r) ?? "the package could not be restored");
        var formatted = d.Location.IsInSource ? $"{file}({line},{col}): {sev} {d.Id}: {message}" : $"{sev} {d.Id}: {message}";
        return new ScriptDiagnostic(d.Id, d.Severity == DiagnosticSeverity.Error, message, file, line, col, formatted);
    }

    /// <summary>The framework's reference assemblies (the SDK's reference pack, as csc compiles against; the runtime's
    /// implementation assemblies from the TPA list when the pack is not installed) plus the shared contract assemblies;
    /// made once per process so Roslyn reads each one's metadata once.</summary>
    private static ImmutableArray<MetadataReference> BaseReferences(Type globalsType)
    {
        lock (Gate)
        {
            if (_baseReferences is { } cached) return cached;
            var paths = ReferencePackAssemblies() ?? ImplementationAssemblies();
            foreach (var t in new[] { globalsType, typeof(VirtLab.Sdk.IDisplayable), typeof(Spectre.Console.AnsiConsole), typeof(Iced.Intel.Instruction) })
                if (!paths.Contains(t.Assembly.Location)) paths.Add(t.Assembly.Location);
            var refs = paths.Select(Reference).ToImmutableArray();
            _baseReferences = refs;
            return refs;
        }
    }

    /// <summary>Starts <see cref="PrepareFirstCompile"/> on a worker thread: a run that missed the cache calls it before
    /// it goes looking for plugins, so the references are opened while it does (its compile takes the lock and finds
    /// them made, or waits for the rest).</summary>
    public static void PrepareFirstCompileInBackground(Type globalsType) =>
        new Thread(() =>
        {
            try { PrepareFirstCompile(globalsType); }
            catch (Exception) { } // the compile makes the references itself and reports what is wrong
        }) { IsBackground = true, Name = "virtlab-references" }.Start();

    /// <summary>
    /// For a process's first compile, on a thread beside it: makes the base references (~170 assemblies opened), then
    /// emits an empty assembly — next to no binding, which the first compile is doing on its own thread meanwhile, but
    /// the metadata and PE writers that compile's emit needs next: first run 0.49 → 0.42 s, REPL first result 0.60 →
    /// 0.53 s (medians, 2 cores). A throwaway compile of real code there made both slower instead: the two threads
    /// JIT-compiled and type-loaded the same binder code and waited on each other.
    /// </summary>
    public static void PrepareFirstCompile(Type globalsType)
    {
        var refs = BaseReferences(globalsType);
        var corlib = refs.FirstOrDefault(r => r.Display is { } d && Path.GetFileNameWithoutExtension(d) is "System.Runtime" or "System.Private.CoreLib");
        var empty = CSharpCompilation.Create("virtlab-warm-emit", references: corlib is null ? [] : [corlib],
            options: new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, optimizationLevel: OptimizationLevel.Release, concurrentBuild: false));
        empty.Emit(new MemoryStream(), options: EmitOpts);
    }

    /// <summary>Where the framework's references came from: the reference pack's folder, or null for the TPA list
    /// (no pack installed, or VIRTLAB_REFERENCE_PACK=0 to compare or work around a broken pack).</summary>
    public static string? ReferencePackDirectory =>
        Environment.GetEnvironmentVariable("VIRTLAB_REFERENCE_PACK") == "0" ? null : InstalledReferencePack.Value;

    private static readonly Lazy<string?> InstalledReferencePack = new(FindReferencePack);

    /// <summary>
    /// Reference assemblies hold only the public surface: their metadata is a fraction of the implementation's (Roslyn
    /// reads all of it on a first compile: ~0.1 s of page faults and file reads for ~160 assemblies), and a recipe
    /// compiles against exactly what a project would. Null when no pack for this runtime's major.minor is installed.
    /// </summary>
    private static List<string>? ReferencePackAssemblies() =>
        ReferencePackDirectory is { } dir
            ? Directory.GetFiles(dir, "*.dll").Where(p => IsFrameworkName(Path.GetFileNameWithoutExtension(p))).Order(StringComparer.Ordinal).ToList()
            : null;

    private static List<string> ImplementationAssemblies()
    {
        var frameworkDir = Path.GetDirectoryName(typeof(object).Assembly.Location)!;
        var tpa = ((AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") as string) ?? "").Split(Path.PathSeparator, StringSplitOptions.RemoveEmptyEntries);
        return tpa.Where(p => string.Equals(Path.GetDirectoryName(p), frameworkDir, StringComparison.Ordinal) && IsFrameworkName(Path.GetFileNameWithoutExtension(p)))
            .ToList();
    }

    /// <summary>dotnet/packs/Microsoft.NETCore.App.Ref/V/ref/netM.N/ of the dotnet root this runtime came from (then
    /// DOTNET_ROOT's and the usual install folders': a self-contained layout has none): V = the runtime's own version when installed, else the
    /// highest M.N.* (reference assemblies keep their version, M.N.0.0, across patches, so any of them binds).</summary>
    private static string? FindReferencePack()
    {
        var frameworkDir = Path.GetDirectoryName(typeof(object).Assembly.Location)!;
        var runtimeVersion = Environment.Version.ToString(); // not the folder's name: a self-contained layout has none
        var tfm = $"net{Environment.Version.Major}.{Environment.Version.Minor}";
        var roots = new List<string?>();
        if (Path.GetFileName(Path.GetDirectoryName(frameworkDir)) == "Microsoft.NETCore.App")
            roots.Add(Path.GetDirectoryName(Path.GetDirectoryName(Path.GetDirectoryName(frameworkDir))));
        roots.AddRange([Environment.GetEnvironmentVariable("DOTNET_ROOT"), "/usr/share/dotnet", "/usr/lib/dotnet", "/usr/local/share/dotnet"]);
        foreach (var root in roots)
        {
            if (string.IsNullOrEmpty(root)) continue;
            var packs = Path.Combine(root, "packs", "Microsoft.NETCore.App.Ref");
            if (!Directory.Exists(packs)) continue;
            var exact = Path.Combine(packs, runtimeVersion, "ref", tfm);
            if (File.Exists(Path.Combine(exact, "System.Runtime.dll"))) return exact;
            var prefix = $"{Environment.Version.Major}.{Environment.Version.Minor}.";
            var best = Directory.GetDirectories(packs)
                .Select(d => (Dir: d, Version: Version.TryParse(Path.GetFileName(d).Split('-')[0], out var v) ? v : null))
                .Where(x => x.Version is not null && Path.GetFileName(x.Dir).StartsWith(prefix, StringComparison.Ordinal)
                            && File.Exists(Path.Combine(x.Dir, "ref", tfm, "System.Runtime.dll")))
                .OrderByDescending(x => x.Version).FirstOrDefault();
            if (best.Dir is not null) return Path.Combine(best.Dir, "ref", tfm);
        }
        return null;
    }

    /// <summary>A reference with its XML docs when there are any (read only when completion or quick info asks): the
    /// .xml beside the assembly (the SDK's, a plugin's), else the framework reference pack's.</summary>
    public static MetadataReference Reference(string path)
    {
        var xml = Path.ChangeExtension(path, ".xml");
        if (!File.Exists(xml)) xml = FrameworkDocs(path) ?? "";
        return MetadataReference.CreateFromFile(path, documentation: File.Exists(xml) ? XmlDocumentationProvider.CreateFromFile(xml) : null);
    }

    /// <summary>A runtime assembly X.dll (the TPA-list fallback) → X.xml in the installed reference pack
    /// (<see cref="FindReferencePack"/>; CoreLib's types are documented in System.Runtime.xml); null when no pack is installed.</summary>
    private static string? FrameworkDocs(string path)
    {
        if (InstalledReferencePack.Value is not { } refDir) return null;
        var name = Path.GetFileNameWithoutExtension(path);
        return Path.Combine(refDir, (name == "System.Private.CoreLib" ? "System.Runtime" : name) + ".xml");
    }

    private static bool IsFrameworkName(string name) =>
        name.StartsWith("System", StringComparison.Ordinal) || name is "netstandard" or "mscorlib" or "Microsoft.CSharp" or "Microsoft.VisualBasic"
        || name.StartsWith("Microsoft.Win32.", StringComparison.Ordinal);
}
