using Xunit;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>Builds a small real plugin (global <c>Greeter</c>) with Roslyn against VirtLab.Sdk, as a build would.</summary>
internal static class TestPlugin
{
    public const string Name = "ReplTestGreeter";

    /// <summary>Writes <c>&lt;root&gt;/ReplTestGreeter/ReplTestGreeter.dll</c> (in place, like a rebuild's copy) and returns the plugin folder.</summary>
    public static string Build(string root, string version, string greeting)
    {
        var source = $$"""
            using System.Reflection;
            using VirtLab.Sdk.Plugins;
            [assembly: AssemblyInformationalVersion("{{version}}")]
            [assembly: AssemblyVersion("{{version}}.0")]
            namespace ReplTest;
            public sealed class GreeterApi
            {
                public string Hello(string who) => "{{greeting}} " + who;
                public int Version => {{version.Split('.')[0]}};
                public void Crash() => System.Environment.FailFast("plugin crashed on purpose");
                public void Throw() => throw new System.InvalidOperationException("plugin threw on purpose");
            }
            public sealed class GreeterPlugin : VirtLabPlugin<GreeterApi>
            {
                public override string GlobalName => "Greeter";
                public override string Description => "REPL test plugin";
                protected override GreeterApi Create(PluginContext context) => new();
            }
            """;
        var frameworkDir = Path.GetDirectoryName(typeof(object).Assembly.Location)!;
        var references = Directory.GetFiles(frameworkDir, "*.dll")
            .Where(f => { try { System.Reflection.AssemblyName.GetAssemblyName(f); return true; } catch (BadImageFormatException) { return false; } })
            .Append(Path.Combine(AppContext.BaseDirectory, "VirtLab.Sdk.dll"))
            .Select(f => MetadataReference.CreateFromFile(f));
        var compilation = CSharpCompilation.Create(Name,
            [CSharpSyntaxTree.ParseText(source)],
            references,
            new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));
        using var ms = new MemoryStream();
        var emit = compilation.Emit(ms);
        Assert.True(emit.Success, string.Join("\n", emit.Diagnostics));
        var dir = Path.Combine(root, Name);
        Directory.CreateDirectory(dir);
        File.WriteAllBytes(Path.Combine(dir, Name + ".dll"), ms.ToArray());
        return dir;
    }
}
