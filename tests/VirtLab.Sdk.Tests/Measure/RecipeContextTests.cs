using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public class RecipeContextTests
{
    [Fact]
    public void Failed_expectation_is_recorded_reported_and_the_recipe_goes_on()
    {
        var log = new StringWriter();
        var g = new RecipeGlobals(new RecipeContext { Log = log });
        Assert.True(g.Expect(1 + 1 == 2, "arithmetic works"));
        Assert.False(g.Expect(false, "dirty pages == 512"));
        g.Result("after", 1); // still running
        Assert.Equal([new Expectation("arithmetic works", true), new Expectation("dirty pages == 512", false)], g.Context.Expectations);
        Assert.Equal("expectation failed: dirty pages == 512", log.ToString().Trim());
        Assert.False(g.Context.AllExpectationsPassed);
        Assert.Equal(1, g.Context.ExitCodeFor(null));
    }

    [Fact]
    public void Exit_codes()
    {
        var ctx = new RecipeContext { Log = null };
        Assert.Equal(0, ctx.ExitCodeFor(null));
        Assert.Equal(1, ctx.ExitCodeFor(new InvalidOperationException()));
        Assert.Equal(3, ctx.ExitCodeFor(new RecipeArgumentException("--x: bad")));
        Assert.Equal(4, ctx.ExitCodeFor(new RequirementMissingException("needs /dev/kvm")));
        Assert.Equal(4, ctx.ExitCodeFor(new AggregateException(new RequirementMissingException("r"))));
    }

    [Fact]
    public void Require_throws_requirement_missing_with_the_reason()
    {
        var g = new RecipeGlobals(new RecipeContext());
        g.Require(true, "fine");
        var e = Assert.Throws<RequirementMissingException>(() => g.Require(false, "needs 2 MiB hugepages"));
        Assert.Equal("needs 2 MiB hugepages", e.Reason);
    }

    [Fact]
    public void RequireKvm_passes_or_says_why_not()
    {
        var g = new RecipeGlobals(new RecipeContext());
        if (VirtLab.Sdk.Machine.Vm.IsKvmUsable(out var why)) { g.RequireKvm(); return; }
        var e = Assert.Throws<RequirementMissingException>(g.RequireKvm);
        Assert.Contains("/dev/kvm", e.Message);
        Assert.Contains(why, e.Message);
    }

    [Fact]
    public void Results_keep_first_order_and_last_value()
    {
        var g = new RecipeGlobals(new RecipeContext());
        Assert.Equal(3, g.Result("a", 3));
        g.Result("b", "x");
        g.Result("a", 4);
        Assert.Equal([new RecipeResult("a", 4), new RecipeResult("b", "x")], g.Context.Results);
    }

    [Fact]
    public void Globals_expose_context_state()
    {
        using var cts = new CancellationTokenSource();
        var ctx = new RecipeContext(RecipeArgs.Parse("--a", "1"), testMode: true, cts.Token);
        var plugins = new Dictionary<string, object> { ["Mmu"] = "api" };
        var g = new RecipeGlobals(ctx, plugins);
        Assert.True(g.TestMode);
        Assert.Equal("1", g.Args["a"]);
        Assert.Same(ctx.Stages, g.Stages);
        Assert.Equal("api", g.__Plugins["Mmu"]);
        cts.Cancel();
        Assert.True(g.Cancellation.IsCancellationRequested);
        // The REPL host hands each submission a fresh token.
        ctx.Cancellation = CancellationToken.None;
        Assert.False(g.Cancellation.IsCancellationRequested);
    }
}
