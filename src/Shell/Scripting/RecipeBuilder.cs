using Microsoft.CodeAnalysis;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Scripting;

/// <summary>
/// Compiles a recipe file: the plugin preamble (its own submission, so the recipe's line numbers are its
/// file's), then the recipe with its #load closure. The only way the run path reaches Roslyn, and only
/// on a cache miss — keep Roslyn types out of its signature.
/// </summary>
public static class RecipeBuilder
{
    /// <returns>The recipe (null on errors) and the diagnostics: errors first, then warnings (also kept in the recipe).</returns>
    public static (CompiledRecipe? Recipe, IReadOnlyList<ScriptDiagnostic> Diagnostics) Compile(string recipePath, string source, PluginSet plugins, string keyForNames) =>
        Compile(recipePath, source, CompileInputs.From(plugins), keyForNames);

    /// <param name="reference">How a plugin path becomes a reference (the compile server keeps them between requests).</param>
    public static (CompiledRecipe? Recipe, IReadOnlyList<ScriptDiagnostic> Diagnostics) Compile(string recipePath, string source, CompileInputs inputs, string keyForNames,
        Func<string, MetadataReference>? reference = null)
    {
        var full = Path.GetFullPath(recipePath);
        var compiler = new ScriptCompiler(inputs, typeof(RecipeGlobals), Path.GetDirectoryName(full)!, reference);
        var submissions = new List<CompiledRecipe.Submission>();
        var preamble = compiler.CreatePreamble($"virtlab-recipe-{keyForNames}-0");
        if (preamble is not null)
        {
            var (pre, preDiags) = compiler.Emit(preamble);
            if (pre is null) return (null, preDiags.Where(d => d.IsError).Select(d => d with { Formatted = "<plugin preamble>" + d.Formatted }).ToList());
            submissions.Add(new(pre.TypeName, pre.Image));
        }
        var tree = ScriptCompiler.Parse(source, full);
        var compilation = compiler.CreateSubmission($"virtlab-recipe-{keyForNames}-1", tree, preamble);
        var (main, diags) = compiler.Emit(compilation);
        if (main is null) return (null, diags);
        if (main.TypeName is not null) submissions.Add(new(main.TypeName, main.Image)); // else: nothing to run

        var sources = compilation.SyntaxTrees.Select(t => t.FilePath).Where(p => p.Length > 0).Distinct()
            .Select(p => new CompiledRecipe.FileHash(p, RecipeCache.Hash(p))).ToList();
        // #r "nuget: …" names one assembly to the compiler; its package's dependencies load at run time too.
        var refs = compilation.DirectiveReferences.OfType<PortableExecutableReference>().Select(r => r.FilePath).OfType<string>()
            .Concat(NuGetMetadataResolver.ClosurePaths).Distinct()
            .Select(p => new CompiledRecipe.FileHash(p, RecipeCache.Hash(p))).ToList();
        var warnings = diags.Where(d => !d.IsError).Select(d => d.Formatted).ToList();
        return (new CompiledRecipe(submissions, sources, refs, warnings), diags);
    }
}
