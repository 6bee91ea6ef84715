using VirtLab.Shell.Cli;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>The <c>run</c> fast path (<see cref="CommandLine.SimpleRunArguments"/>) reads exactly what the full
/// System.CommandLine parser reads, and leaves everything else to it.</summary>
public sealed class CommandLineTests
{
    [Theory]
    [InlineData("run x.csx")]
    [InlineData("run x.csx --test")]
    [InlineData("run --test x.csx")]
    [InlineData("run --no-cache x.csx --json out.json --test")]
    [InlineData("run x.csx --plugins a --plugins b")]
    [InlineData("run x.csx -- --memory 8G x")]
    [InlineData("run --plugins p x.csx --no-cache -- a")]
    public void The_fast_path_agrees_with_the_parser(string line)
    {
        var argv = line.Split(' ');
        var fast = CommandLine.SimpleRunArguments(argv);
        Assert.NotNull(fast);
        var parse = CommandLine.Build().Parse(argv);
        Assert.Empty(parse.Errors);
        Assert.Equal(parse.GetValue<string>("FILE"), fast.File);
        Assert.Equal(parse.GetValue<string?>("--json"), fast.JsonPath);
        Assert.Equal(parse.GetValue<string[]>("--plugins") ?? [], fast.PluginDirectories);
        Assert.Equal(parse.GetValue<bool>("--test"), fast.TestMode);
        Assert.Equal(parse.GetValue<bool>("--no-cache"), fast.NoCache);
        Assert.Equal(parse.GetValue<string[]>("ARGS") ?? [], fast.Arguments);
        Assert.Null(fast.PlotsDirectory);
        Assert.Equal(parse.GetValue<string>("--plot-format"), fast.PlotFormat);
    }

    [Theory]
    [InlineData("run")]
    [InlineData("run --help")]
    [InlineData("run -h")]
    [InlineData("run x.csx --repeat 3")]
    [InlineData("run x.csx --watch")]
    [InlineData("run x.csx --plots d")]
    [InlineData("run x.csx --json")]
    [InlineData("run x.csx --json --test")]
    [InlineData("run x.csx --test --test")]
    [InlineData("run x.csx --test true")]
    [InlineData("run --test false x.csx")]
    [InlineData("run x.csx extra")]
    [InlineData("run x.csx --bogus")]
    [InlineData("run @args.rsp")]
    [InlineData("run -- x.csx")]
    [InlineData("--plugins p run x.csx")]
    [InlineData("test x.csx")]
    public void Anything_else_goes_to_the_parser(string line) =>
        Assert.Null(CommandLine.SimpleRunArguments(line.Split(' ')));
}
