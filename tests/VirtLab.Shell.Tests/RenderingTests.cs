
using VirtLab.Sdk.Measure;
using VirtLab.Shell.Rendering;
using Xunit;

namespace VirtLab.Shell.Tests;

public sealed class RenderingTests
{
    public sealed record Slot(int Id, Size Size, string Backing);

    private static string Render(object? value)
    {
        var w = new StringWriter();
        ValueRenderer.Write(Consoles.Create(w, isTerminal: false), value);
        return w.ToString();
    }

    [Fact]
    public void Values_render_readably_without_ansi_when_redirected()
    {
        Assert.Equal("null\n", Render(null));
        Assert.Equal("\"a \\\"quoted\\\"\\n string\"\n", Render("a \"quoted\"\n string"));
        Assert.Equal("42\n", Render(42));
        Assert.Equal("1.5\n", Render(1.5));
        Assert.Equal(2.GiB().ToString() + "\n", Render(2.GiB()));
        Assert.Equal("[1, 2, 3]\n", Render(new List<int> { 1, 2, 3 }));
        Assert.Contains("… (100 items)", Render(Enumerable.Range(0, 100).ToArray()));
        Assert.Equal("DayOfWeek.Monday\n", Render(DayOfWeek.Monday));

        var record = Render(new Slot(1, 4.MiB(), "thp"));
        Assert.Contains("Slot", record);
        Assert.Contains("Backing", record);
        Assert.Contains("\"thp\"", record);

        var table = Render(new[] { new Slot(0, 1.MiB(), "anon"), new Slot(1, 2.MiB(), "memfd") });
        Assert.Contains("Id", table);
        Assert.Contains("\"memfd\"", table);

        Assert.Contains("System.InvalidOperationException: nope", Render(new InvalidOperationException("nope")));
        var all = string.Concat(record, table);
        Assert.DoesNotContain("\u001b[", all);
    }

    [Fact]
    public void A_renderable_without_a_final_newline_still_ends_its_line()
    {
        Assert.Equal("hi\n", Render(new Spectre.Console.Text("hi")));
        Assert.Equal("hi\n", Render(new Spectre.Console.Markup("[red]hi[/]")));
        Assert.Equal("hi\n", Render(new Spectre.Console.Text("hi\n")));
        var table = Spectre.Console.TableExtensions.AddColumn(new Spectre.Console.Table(), "a");
        Assert.EndsWith("┘\n", Render(Spectre.Console.TableExtensions.AddRow(table, "1"))); // one line break, not two
    }

    [Fact]
    public void Displayable_values_render_themselves()
    {
        var stages = new StageSet();
        stages.Record("populate", TimeSpan.FromMilliseconds(12));
        Assert.Contains("populate", Render(stages));
    }

    [Fact]
    public void Machine_model_values_are_shown_through_the_sdk_adapter()
    {
        // The model (VirtLab.Sdk.Machine) has no UI dependency; the shell shows it through VirtLab.Sdk.Rendering.
        using var vm = VirtLab.Sdk.Machine.Vm.Create(new VirtLab.Sdk.Machine.VmOptions(1.MiB()) { Backend = VirtLab.Sdk.Machine.Backend.Sim, Vcpus = 2 });
        var shown = Render(vm);
        Assert.Contains("Sim VM, 2 vCPU(s)", shown);
        foreach (var slot in vm.Slots) Assert.Contains($"[0x{slot.Gpa:x}, 0x{slot.EndGpa:x})", shown);
        Assert.Contains("dirty log: legacy get", shown);
        var result = Render(vm.Run(VirtLab.Sdk.Machine.Workload.Write(passes: 1)));
        Assert.Contains("on Sim:", result);
        Assert.Contains("pass 0 ms", result);
        Assert.DoesNotContain("Property", result); // not the generic property table
    }
}
