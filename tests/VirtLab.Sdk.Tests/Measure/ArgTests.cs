using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public enum TestBacking { Anonymous, AnonymousThp, Hugetlb }

public class ArgTests
{
    private static RecipeGlobals G(bool test = false, params string[] argv) =>
        new(new RecipeContext(RecipeArgs.Parse(argv), test) { Log = null });

    private static RecipeGlobals G(params string[] argv) => G(false, argv);

    [Fact]
    public void Parses_space_equals_and_flag_forms()
    {
        var a = RecipeArgs.Parse("--memory", "8G", "--inflate=7G", "--flag", "--last");
        Assert.Equal("8G", a["memory"]);
        Assert.Equal("7G", a["--inflate"]);
        Assert.True(a.Has("flag"));
        Assert.Null(a["flag"]);
        Assert.True(a.Has("last"));
        Assert.Equal(["memory", "inflate", "flag", "last"], a.Keys);
    }

    [Fact]
    public void Later_occurrence_wins_names_ignore_case_and_double_dash_ends_options()
    {
        var a = RecipeArgs.Parse("--n", "1", "--N", "2", "pos", "-5", "--", "--not-an-option");
        Assert.Equal("2", a["n"]);
        Assert.Single(a.Keys);
        Assert.Equal(["pos", "-5", "--not-an-option"], a.Positional);
    }

    [Fact]
    public void Single_dash_option_is_refused()
    {
        var e = Assert.Throws<RecipeArgumentException>(() => RecipeArgs.Parse("-m", "8G"));
        Assert.Contains("'-m'", e.Message);
        Assert.Contains("two dashes", e.Message);
    }

    [Fact]
    public void Size_argument()
    {
        Assert.Equal(8.GiB(), G("--memory", "8G").Arg("memory", 1.GiB()));
        Assert.Equal(512.MiB(), G("--memory=512M").Arg("memory", 1.GiB()));
        Assert.Equal(1.GiB(), G().Arg("memory", 1.GiB()));
    }

    [Fact]
    public void Numbers()
    {
        var g = G("--n", "42", "--big", "0x1_0000_0000", "--neg", "-3", "--ratio", "0.25", "--sci", "1e6");
        Assert.Equal(42, g.Arg("n", 1));
        Assert.Equal(1L << 32, g.Arg("big", 0L));
        Assert.Equal(-3, g.Arg("neg", 0));
        Assert.Equal(0.25, g.Arg("ratio", 1.0));
        Assert.Equal(1e6, g.Arg("sci", 0.0));
        Assert.Equal(7, g.Arg("absent", 7));
    }

    [Fact]
    public void Bools_flag_without_value_is_true()
    {
        var g = G("--verbose", "--dry=false", "--thp", "yes", "--x", "0");
        Assert.True(g.Arg("verbose", false));
        Assert.False(g.Arg("dry", true));
        Assert.True(g.Arg("thp", false));
        Assert.False(g.Arg("x", true));
        Assert.True(g.Arg("absent", true));
    }

    [Fact]
    public void Strings_keep_text_as_given()
    {
        Assert.Equal(" a b ", G("--name= a b ").Arg("name", ""));
        Assert.Equal("dflt", G().Arg("name", "dflt"));
    }

    [Theory]
    [InlineData("hugetlb", TestBacking.Hugetlb)]
    [InlineData("Anonymous_THP", TestBacking.AnonymousThp)]
    [InlineData("anonymous-thp", TestBacking.AnonymousThp)]
    [InlineData("AnonymousThp", TestBacking.AnonymousThp)]
    public void Enums_case_insensitive_with_selftest_names(string text, TestBacking expected) =>
        Assert.Equal(expected, G("--backing", text).Arg("backing", TestBacking.Anonymous));

    [Theory]
    [InlineData("500ms", 500 * TimeSpan.TicksPerMillisecond)]
    [InlineData("2s", 2 * TimeSpan.TicksPerSecond)]
    [InlineData("3", 3 * TimeSpan.TicksPerSecond)]
    [InlineData("1.5m", 90 * TimeSpan.TicksPerSecond)]
    [InlineData("1h", TimeSpan.TicksPerHour)]
    [InlineData("250us", 250 * TimeSpan.TicksPerMicrosecond)]
    [InlineData("00:01:05", 65 * TimeSpan.TicksPerSecond)]
    public void Durations(string text, long ticks) =>
        Assert.Equal(TimeSpan.FromTicks(ticks), G("--t", text).Arg("t", TimeSpan.Zero));

    [Fact]
    public void Nullable_types()
    {
        Assert.Null(G().Arg<int?>("n", null));
        Assert.Equal(5, G("--n", "5").Arg<int?>("n", null));
    }

    [Fact]
    public void Test_mode_default_applies_only_in_test_mode_and_only_when_absent()
    {
        Assert.Equal(64.MiB(), G(test: true).Arg("memory", 8.GiB(), test: 64.MiB()));
        Assert.Equal(8.GiB(), G(test: false).Arg("memory", 8.GiB(), test: 64.MiB()));
        Assert.Equal(1.GiB(), G(true, "--memory", "1G").Arg("memory", 8.GiB(), test: 64.MiB()));
        Assert.Equal(8.GiB(), G(test: true).Arg("memory", 8.GiB())); // no test default given
    }

    [Theory]
    [InlineData("8X", "'8X' is not a size")]
    [InlineData("", "empty size")]
    [InlineData("1.5B", "whole number of bytes")]
    public void Bad_size_names_option_text_and_allowed_form(string text, string fragment)
    {
        var e = Assert.Throws<RecipeArgumentException>(() => G("--memory", text).Arg("memory", 1.GiB()));
        Assert.StartsWith("--memory: ", e.Message);
        Assert.Contains(fragment, e.Message);
    }

    [Fact]
    public void Bad_values_of_each_type()
    {
        void Check<T>(string text, T dflt, string expect)
        {
            var e = Assert.Throws<RecipeArgumentException>(() => G("--v", text).Arg("v", dflt));
            Assert.Contains("--v", e.Message);
            Assert.Contains($"'{text}'", e.Message);
            Assert.Contains(expect, e.Message);
        }
        Check("12x", 0, "integer");
        Check("3000000000", 0, "32-bit integer");
        Check("1.5", 0L, "integer");
        Check("fast", 0.0, "not a number");
        Check("maybe", false, "true/false");
        Check("5 parsecs", TimeSpan.Zero, "duration");
        Check("thp", TestBacking.Anonymous, "expected one of anonymous, anonymousthp, hugetlb");
        Check("1", TestBacking.Anonymous, "not a TestBacking"); // numbers are not names
    }

    [Fact]
    public void Bare_flag_for_a_value_type_says_what_is_needed()
    {
        var e = Assert.Throws<RecipeArgumentException>(() => G("--memory").Arg("memory", 1.GiB()));
        Assert.Equal("--memory: needs a value (a size, e.g. 512M, 8G)", e.Message);
    }

    [Fact]
    public void Unsupported_type_is_a_programming_error()
    {
        var e = Assert.Throws<NotSupportedException>(() => G().Arg("x", new Uri("http://a")));
        Assert.Contains("Arg<Uri>(\"x\")", e.Message);
    }

    [Fact]
    public void Effective_args_hold_defaults_in_parseable_form_and_unread_args_are_listed()
    {
        var g = G("--memory", "8G", "--typo", "1");
        g.Arg("memory", 1.GiB());
        g.Arg("pages", 1536.KiB());
        g.Arg("wait", TimeSpan.FromMilliseconds(1500));
        g.Arg("mode", TestBacking.AnonymousThp);
        var eff = g.Context.EffectiveArgs;
        Assert.Equal("8G", eff["memory"]);
        Assert.Equal("1536K", eff["pages"]);
        Assert.Equal("1500ms", eff["wait"]);
        Assert.Equal("AnonymousThp", eff["mode"]);
        Assert.Equal("1", eff["typo"]);
        Assert.Equal(["typo"], g.Context.UnreadArgs);
        // Every effective value parses back to the same value.
        var again = G(eff.SelectMany(kv => new[] { "--" + kv.Key, kv.Value! }).ToArray());
        Assert.Equal(1536.KiB(), again.Arg("pages", 0.Bytes()));
        Assert.Equal(TimeSpan.FromMilliseconds(1500), again.Arg("wait", TimeSpan.Zero));
        Assert.Equal(TestBacking.AnonymousThp, again.Arg("mode", TestBacking.Anonymous));
    }
}
