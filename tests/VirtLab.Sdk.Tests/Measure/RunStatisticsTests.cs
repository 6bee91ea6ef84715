using System.Text.Json.Nodes;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public sealed class RunStatisticsTests
{
    [Fact]
    public void Spread_of_odd_and_even_counts()
    {
        Assert.Equal(new Spread(5, 3, 1, 10), Spread.Of([10, 1, 3, 2, 4]));
        var even = Spread.Of([4, 1, 3, 2]);
        Assert.Equal((4, 2.5, 1.0, 4.0), (even.N, even.Median, even.Min, even.Max));
        Assert.Equal(3, even.Range);
        Assert.Equal(1.2, even.Relative, 9);
        Assert.Equal(new Spread(2, 1.5, 1, 2), Spread.Of([1, double.NaN, 2])); // NaN (a 0-second rate) is left out
        Assert.Throws<ArgumentException>(() => Spread.Of([]));
    }

    private static RunRecord Record(double populate, double inner, int pages, double rate) => new()
    {
        Recipe = new RecipeInfo("/r/x.csx", "ab"),
        Args = new Dictionary<string, string?>(),
        Argv = [],
        Environment = EnvironmentInfo.Capture("1.0.0"),
        Stages = [new StageRecord("populate", populate, new Dictionary<string, long>()), new StageRecord("touch", inner, new Dictionary<string, long>()) { Parent = "populate" }],
        Expectations = [],
        Results = new Dictionary<string, JsonNode?>
        {
            ["pages"] = pages, ["backend"] = "Kvm", ["rate"] = new JsonObject { ["perSecond"] = rate, ["unit"] = "B" }, ["list"] = new JsonArray(1, 2),
        },
    };

    [Fact]
    public void Repeat_summary_per_stage_and_numeric_result()
    {
        var runs = new[] { Record(0.3, 0.1, 10, 5), Record(0.1, 0.2, 30, 7), Record(0.2, 0.3, 20, 6) };
        var s = RepeatSummary.Create(runs, warmup: 2);
        Assert.Equal((3, 2), (s.Repetitions, s.Warmup));
        Assert.Equal(["populate", "populate / touch"], s.Stages.Keys);
        Assert.Equal(new Spread(3, 0.2, 0.1, 0.3), s.Stages["populate"]);
        Assert.Equal(new Spread(3, 0.2, 0.1, 0.3), s.Stages["populate / touch"]);
        Assert.Equal(["pages", "rate.perSecond"], s.Results.Keys); // strings and arrays are not measures
        Assert.Equal(new Spread(3, 20, 10, 30), s.Results["pages"]);
        Assert.Equal(new Spread(3, 6, 5, 7), s.Results["rate.perSecond"]);
        Assert.Same(runs[1], s.Runs[1]);

        // Round trip through the record's JSON.
        var withRepeat = runs[0] with { Repeat = s };
        var back = RunRecord.Parse(withRepeat.ToJson());
        Assert.Equal(s.Stages["populate"], back.Repeat!.Stages["populate"]);
        Assert.Equal(3, back.Repeat.Runs.Count);
        Assert.Equal(30, back.Repeat.Runs[1].Results["pages"]!.GetValue<int>());
    }
}
