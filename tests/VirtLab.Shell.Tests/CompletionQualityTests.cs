using VirtLab.Sdk.Measure;
using VirtLab.Shell.PluginHost;
using VirtLab.Shell.Scripting;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>Completion in the places a user presses Tab: statics of SDK types, enum members, lambdas, after <c>new</c>.</summary>
public sealed class CompletionQualityTests
{
    private static readonly Lazy<InteractiveSession> s_session = new(() =>
    {
        var s = new InteractiveSession(PluginSet.Empty, new RecipeContext());
        var r = s.Submit("var sizes = new List<Size> { 1.MiB(), 2.MiB() }; var backing = Backing.AnonymousThp;");
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
}
