using System.Diagnostics;
using System.Reflection;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace VirtLab.Shell.Tests;

/// <summary>A temporary folder removed after the test.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), "vl-test-" + Guid.NewGuid().ToString("N")[..10]));
    public string Path { get; }
    public string File(string name, string content)
    {
        var p = System.IO.Path.Combine(Path, name);
        Directory.CreateDirectory(System.IO.Path.GetDirectoryName(p)!);
        System.IO.File.WriteAllText(p, content);
        return p;
    }
    public void Dispose() { try { Directory.Delete(Path, recursive: true); } catch (IOException) { } }
}

public sealed record ProcessResult(int ExitCode, string Stdout, string Stderr)
{
    public override string ToString() => $"exit {ExitCode}\n--- stdout\n{Stdout}\n--- stderr\n{Stderr}";
}

/// <summary>Runs the real shell: `dotnet virtlab.dll …` from the test output folder, with its own recipe cache.</summary>
public static class Virtlab
{
    public static string Dll => System.IO.Path.Combine(AppContext.BaseDirectory, "virtlab.dll");

    public static ProcessResult Run(string? cache, string workingDirectory, params string[] args) => Run(cache, workingDirectory, null, args);

    public static ProcessResult Run(string? cache, string workingDirectory, IDictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = workingDirectory };
        psi.ArgumentList.Add(Dll);
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["VIRTLAB_CACHE"] = cache ?? System.IO.Path.Combine(workingDirectory, ".cache");
        psi.Environment.Remove("VIRTLAB_PLUGINS");
        psi.Environment["NO_COLOR"] = "1";
        if (env is not null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(180))) { p.Kill(true); throw new TimeoutException("virtlab " + string.Join(' ', args)); }
        p.WaitForExit();
        return new ProcessResult(p.ExitCode, stdout.Result, stderr.Result);
    }
}

/// <summary>Builds small plugins with Roslyn against the real VirtLab.Sdk (or a fake one) — no dotnet build needed.</summary>
public static class PluginCompiler
{
    private static readonly Lazy<MetadataReference[]> Framework = new(() =>
        ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(System.IO.Path.PathSeparator)
            .Where(p => System.IO.Path.GetFileName(p) is var n && (n.StartsWith("System.") || n is "netstandard.dll" or "mscorlib.dll"))
            .Select(p => (MetadataReference)MetadataReference.CreateFromFile(p)).ToArray());

    public static string SdkPath => typeof(VirtLab.Sdk.Plugins.VirtLabPlugin).Assembly.Location;

    /// <summary>Compiles <paramref name="source"/> to <c>root/name/name.dll</c>; returns the plugin folder.</summary>
    public static string Build(string root, string name, string source, string version = "1.0.0", string? sdkPath = null)
    {
        var dir = System.IO.Path.Combine(root, name);
        Directory.CreateDirectory(dir);
        Compile(System.IO.Path.Combine(dir, name + ".dll"), name,
            [source, $"[assembly: System.Reflection.AssemblyInformationalVersion(\"{version}\")]"], sdkPath ?? SdkPath);
        return dir;
    }

    public static void Compile(string output, string assemblyName, string source, params string[] references) =>
        Compile(output, assemblyName, [source], references);

    public static void Compile(string output, string assemblyName, string[] sources, params string[] references)
    {
        var compilation = CSharpCompilation.Create(assemblyName,
            sources.Select(s => CSharpSyntaxTree.ParseText(s)),
            Framework.Value.Concat(references.Select(r => MetadataReference.CreateFromFile(r))),
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary));
        var result = compilation.Emit(output);
        if (!result.Success) throw new InvalidOperationException(string.Join("\n", result.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error)));
    }

    /// <summary>A plugin exposing <c>global</c> of type <c>ns.Api</c> with <c>Answer</c> and <c>Hello(string)</c>.</summary>
    public static string Simple(string name, string global, int answer = 42, string create = "new Api()") => $$"""
        using VirtLab.Sdk.Plugins;
        namespace {{name}}Ns;
        public sealed class Api { public int Answer => {{answer}}; public string Hello(string who) => "hello " + who; }
        public sealed class ThePlugin : VirtLabPlugin<Api>
        {
            public override string GlobalName => "{{global}}";
            public override string Description => "test plugin {{name}}";
            protected override Api Create(PluginContext context) => {{create}};
        }
        """;
}
