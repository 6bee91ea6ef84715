using FsCheck;
using FsCheck.Fluent;
using VirtLab.Sdk.Measure;
using Xunit;
using VirtLab.Tests;

namespace VirtLab.Sdk.Tests.Measure;

public class SizeTests
{
    [Theory]
    [InlineData("4096", 4096L)]
    [InlineData("4K", 4096L)]
    [InlineData("512M", 512L << 20)]
    [InlineData("8G", 8L << 30)]
    [InlineData("8 GiB", 8L << 30)]
    [InlineData("2mib", 2L << 20)]
    [InlineData("1T", 1L << 40)]
    [InlineData("1.5G", 3L << 29)]
    public void Parses(string text, long bytes) => Assert.Equal(bytes, Size.Parse(text).Bytes);

    [Fact]
    public void WriteLine_and_interpolation_print_it_as_a_size_and_arithmetic_with_numbers_still_compiles()
    {
        // WriteLine's overload is chosen at compile time: an implicit conversion to long would pick WriteLine(long).
        var w = new StringWriter { NewLine = "\n" };
        w.WriteLine(1.GiB());
        w.WriteLine($"{2.MiB()}");
        Assert.Equal("1 GiB\n2 MiB\n", w.ToString());
        Assert.Equal(1L << 30, (long)1.GiB());
        Assert.Equal(0x1_0010_0000UL, 0x1_0000_0000UL + 1.MiB());  // an address plus a size
        Assert.Equal(new Size(4096 + 1), 4.KiB() + 1);
        Assert.Equal(new Size(4096 - 1), 4.KiB() - 1);
    }

    [Fact]
    public void Formats()
    {
        Assert.Equal("1 GiB", 1.GiB().ToString());
        Assert.Equal("768 MiB", 768.MiB().ToString());
        Assert.Equal("1536 MiB", (1.GiB() + 512.MiB()).ToString());
        Assert.Equal("1.5 GiB", (1.GiB() + 512.MiB() + 1.Bytes()).ToString());
        Assert.Equal("100 B", 100.Bytes().ToString());
        Assert.Equal("1023 KiB", 1023.KiB().ToString());          // below 1 MiB: exact KiB
        Assert.Equal("60.56 MiB", 62012.KiB().ToString());        // above: readable, not "62012 KiB"
        Assert.Equal("8G", 8.GiB().ToExactString());
        Assert.Equal("1536K", 1536.KiB().ToExactString());
        Assert.Equal("4097", 4097.Bytes().ToExactString());
    }

    // Plain byte counts and multiples of each unit, so every branch of ToExactString is hit.
    [Fact]
    public void Exact_form_round_trips() =>
        Prop.ForAll(Arb.From(Gen.Choose(0, 1 << 22)), Arb.From(Gen.Elements(1L, Size.KiBBytes, Size.MiBBytes, Size.GiBBytes, Size.TiBBytes)),
            (int n, long unit) => Size.Parse(new Size(n * unit).ToExactString()).Bytes == n * unit).Check(PropertyRuns.Quick);

    [Fact]
    public void Unit_multiples_round_trip_through_display_form() =>
        Prop.ForAll(Arb.From(Gen.Choose(1, 1 << 20)), Arb.From(Gen.Elements(Size.MiBBytes, Size.GiBBytes, Size.TiBBytes)),
            (int n, long unit) => Size.Parse(new Size(n * unit).ToString()).Bytes == n * unit).Check(PropertyRuns.Quick);

    [Fact]
    public void Compares_with_byte_counts_both_ways()
    {
        var s = 4.KiB();
        Assert.True(s > 0 && s >= 4096 && s <= 4096 && s < 4097);
        Assert.False(s > 4096 || s < 4096);
        Assert.True(4095 < s && 4096 <= s && 4096 >= s && 5000 > s);
        Assert.False(4096 < s || 4096 > s);
    }

    [Fact]
    public void Serializes_as_byte_count()
    {
        Assert.Equal("8589934592", System.Text.Json.JsonSerializer.Serialize(8.GiB()));
        Assert.Equal(8.GiB(), System.Text.Json.JsonSerializer.Deserialize<Size>("\"8G\""));
    }
}

public class RateTests
{
    [Fact]
    public void Formats_bytes_binary_and_counts_decimal()
    {
        Assert.Equal("2 GiB/s", (4.GiB() / TimeSpan.FromSeconds(2)).ToString());
        Assert.Equal("1.5 M pages/s", Rate.Of(3_000_000, TimeSpan.FromSeconds(2), "pages").ToString());
        Assert.Equal("500 ops/s", Rate.Of(500, TimeSpan.FromSeconds(1)).ToString());
        Assert.Equal("n/a ops/s", Rate.Of(1, TimeSpan.Zero).ToString());
    }
}
