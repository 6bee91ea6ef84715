using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>Completion in the places a user presses Tab: statics of SDK types, enum members, lambdas, after <c>new</c>,
/// named arguments, object initializers, generics; signature help and quick info with the SDK's XML docs.</summary>
public sealed class CompletionQualityTests
{
    private static readonly Lazy<InteractiveSession> s_session = new(() =>
    {
        var s = new InteractiveSession(PluginSet.Empty, new RecipeContext());
        var r = s.Submit("var sizes = new List<Size> { 1.MiB(), 2.MiB() }; var backing = Backing.AnonymousThp; Vm vm = null!;");
        Assert.True(r.Succeeded, string.Join("\n", r.Diagnostics) + r.Exception);
        return s;
    });

    private static IReadOnlyList<Completion> At(string code) => s_session.Value.Complete(code, code.Length);

    [Fact]
    public void Static_members_of_sdk_types_and_enum_members()
    {
        var vm = At("Vm.");
        Assert.Contains(vm, c => c.Text == "Create" && c.Kind == CompletionKind.Method);
        Assert.DoesNotContain(vm, c => c.Text == "Slot"); // instance members are not offered on the type
        var backing = At("var b = Backing.");
        Assert.Contains(backing, c => c.Text == "AnonymousThp" && c.Kind == CompletionKind.EnumMember);
        Assert.Contains(At("Backing.An"), c => c.Text == "Anonymous");
        // An enum value offers its extension methods (BackingInfo.PageSize) and instance members.
        Assert.Contains(At("backing."), c => c.Text == "PageSize" && c.Kind == CompletionKind.ExtensionMethod);
    }

    [Fact]
    public void Inside_lambdas_the_parameter_and_its_members_complete()
    {
        Assert.Contains(At("var total = sizes.Select(s => s."), c => c.Text == "Bytes");
        Assert.Contains(At("var total = sizes.Where(item => it"), c => c.Text == "item" && c.Kind == CompletionKind.Parameter);
        Assert.Contains(At("sizes.ForEach(x => { var y = x; y."), c => c.Text == "Bytes");
        Assert.Contains(At("Stage(\"touch\", () => { var local = 1; loc"), c => c.Text == "local" && c.Kind == CompletionKind.Local);
    }

    [Fact]
    public void After_new_only_types_and_namespaces_are_offered()
    {
        var items = At("var d = new ");
        Assert.Contains(items, c => c.Text == "Dictionary" && c.Kind == CompletionKind.Type);
        Assert.Contains(items, c => c.Text == "System" && c.Kind == CompletionKind.Namespace);
        Assert.DoesNotContain(items, c => c.Text == "sizes");   // a variable cannot follow new
        Assert.DoesNotContain(items, c => c.Text == "Expect");  // nor a method
        Assert.DoesNotContain(items, c => c.Text == "while");   // nor a statement keyword
        Assert.Contains(At("var o = new VmOpt"), c => c.Text == "VmOptions");
        Assert.Contains(At("var sb = new System.Text.StringB"), c => c.Text == "StringBuilder");
    }

    [Fact]
    public void Named_arguments_object_initializers_and_generics()
    {
        var named = At("vm.Run(Workload.Write(pa");
        Assert.Equal("passes:", named[0].Text);              // the argument name first, ready to type its value
        Assert.Equal(22, named[0].ReplaceStart);
        var second = At("vm.Run(Workload.Write(1, st");
        Assert.True(second.Any(c => c.Text == "stride:"), string.Join(" ", second.Select(c => c.Text)));
        var init = At("var o = new VmOptions { Vc");
        Assert.Equal("Vcpus", init[0].Text);
        Assert.DoesNotContain(At("var o = new VmOptions { "), c => c.Text == "sizes"); // only the settable members
        Assert.Contains(At("var d = new Dictionary<string, Size>(); d.Values.Fi"), c => c.Text == "First" && c.Kind == CompletionKind.ExtensionMethod);
        Assert.Contains(At("var l = new List<Si"), c => c.Text == "Size" && c.Kind == CompletionKind.Type);
        Assert.Contains(At("var sb = new System.Text.SB"), c => c.Text == "StringBuilder"); // camel humps
    }

    [Fact]
    public void Items_carry_their_signature_and_the_sdk_doc_summary()
    {
        var write = At("Workload.Wri").First(c => c.Text == "Write");
        Assert.Contains("Workload Workload.Write(", write.Detail);
        Assert.Contains("int passes = 1", write.Detail);
        Assert.NotEqual("", write.Doc); // VirtLab.Sdk.xml beside VirtLab.Sdk.dll
        Assert.Equal("List<>", At("var l = new Lis").First(c => c.Text == "List").Display);
    }

    [Fact]
    public void Signature_help_names_the_overloads_and_the_argument_being_typed()
    {
        var s = s_session.Value;
        var help = s.Signature("vm.Run(Workload.Write(1, ", 25)!;
        Assert.NotNull(help);
        Assert.Contains(help.Signatures, x => x.Contains("Workload.Write(int slot = 1, long stride = 4096", StringComparison.Ordinal));
        Assert.Equal("stride", help.Parameter);
        Assert.NotEqual("", help.Doc);
        var named = s.Signature("Workload.Write(passes: ", 23)!;
        Assert.Equal("passes", named.Parameter);
        var max = s.Signature("Math.Max(1, ", 12)!;
        Assert.True(max.Signatures.Count > 5, string.Join("\n", max.Signatures)); // Max(int, int), Max(long, long), …
        Assert.Contains("larger", max.Doc);                  // the framework's docs from the reference pack
        Assert.Null(s.Signature("var x = 1 + ", 12));
    }

    [Fact]
    public void Quick_info_shows_the_declaration_and_its_doc()
    {
        var s = s_session.Value;
        var info = s.QuickInfo("Workload.Write(passes: 3)", 10)!;
        Assert.Contains("Workload Workload.Write(", info);
        var variable = s.QuickInfo("sizes", 5)!;
        Assert.Contains("List<Size>", variable);
        Assert.Null(s.QuickInfo("   ", 1));
    }
}
