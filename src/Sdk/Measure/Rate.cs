using System.Globalization;

namespace VirtLab.Sdk.Measure;

/// <summary>
/// A throughput: an amount per second in some unit. Bytes format with binary prefixes ("3.2 GiB/s"),
/// other units with decimal ones ("1.25 M pages/s"). <c>Rate.Of(pages, elapsed, "pages")</c>, <c>7.GiB() / elapsed</c>.
/// </summary>
public readonly record struct Rate(double PerSecond, string Unit)
{
    /// <summary>The unit of a byte rate (shown as B/s, KiB/s, …).</summary>
    public const string BytesUnit = "B";

    /// <summary><paramref name="count"/> <paramref name="unit"/> in <paramref name="elapsed"/>.</summary>
    public static Rate Of(double count, TimeSpan elapsed, string unit = "ops") =>
        new(elapsed > TimeSpan.Zero ? count / elapsed.TotalSeconds : double.NaN, unit);

    /// <summary>Bytes per second.</summary>
    public static Rate Of(Size bytes, TimeSpan elapsed) => Of(bytes.Bytes, elapsed, BytesUnit);

    /// <inheritdoc/>
    public override string ToString() => Format(PerSecond, Unit) + "/s";

    /// <summary>"1.5 GiB" for bytes, "2.4 M pages" otherwise; three significant digits.</summary>
    public static string Format(double amount, string unit)
    {
        if (double.IsNaN(amount)) return "n/a " + unit;
        bool bytes = unit == BytesUnit;
        double step = bytes ? 1024 : 1000;
        string[] prefixes = bytes ? ["", "Ki", "Mi", "Gi", "Ti", "Pi"] : ["", "k", "M", "G", "T", "P"];
        int p = 0;
        double v = amount;
        while (Math.Abs(v) >= step && p < prefixes.Length - 1) { v /= step; p++; }
        var num = v.ToString(Math.Abs(v) >= 100 ? "0" : Math.Abs(v) >= 10 ? "0.#" : "0.##", CultureInfo.InvariantCulture);
        return bytes ? $"{num} {prefixes[p]}B" : p == 0 ? $"{num} {unit}" : $"{num} {prefixes[p]} {unit}";
    }
}
