using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace VirtLab.Sdk.Measure;

/// <summary>A byte count. <c>1.GiB()</c>, <c>Size.Parse("512M")</c>; prints as "1 GiB" (<see cref="ToExactString"/>
/// for the parseable form, <see cref="Bytes"/> for the number). Converts to long/ulong only explicitly: an implicit
/// conversion made <c>Console.WriteLine(1.GiB())</c> pick <c>WriteLine(long)</c> and print 1073741824.
/// In JSON (run records) a Size is its number of bytes.</summary>
[JsonConverter(typeof(SizeJsonConverter))]
public readonly record struct Size(long Bytes) : IComparable<Size>
{
    /// <summary>Bytes in a KiB, MiB, GiB, TiB.</summary>
    public const long KiBBytes = 1L << 10, MiBBytes = 1L << 20, GiBBytes = 1L << 30, TiBBytes = 1L << 40;

    /// <summary>The byte count (explicit, so overloads taking object or string see a Size, not a number).</summary>
    public static explicit operator long(Size s) => s.Bytes;
    /// <summary>The byte count (checked: a negative size throws).</summary>
    public static explicit operator ulong(Size s) => checked((ulong)s.Bytes);
    /// <summary>Sum (checked).</summary>
    public static Size operator +(Size a, Size b) => new(checked(a.Bytes + b.Bytes));
    /// <summary>Difference (checked).</summary>
    public static Size operator -(Size a, Size b) => new(checked(a.Bytes - b.Bytes));
    /// <summary>A size plus a byte count (checked).</summary>
    public static Size operator +(Size a, long bytes) => new(checked(a.Bytes + bytes));
    /// <summary>A size less a byte count (checked).</summary>
    public static Size operator -(Size a, long bytes) => new(checked(a.Bytes - bytes));
    /// <summary>An address plus a size: <c>slot.Gpa + 1.MiB()</c> (checked).</summary>
    public static ulong operator +(ulong address, Size s) => checked(address + (ulong)s.Bytes);
    /// <summary>An address less a size (checked).</summary>
    public static ulong operator -(ulong address, Size s) => checked(address - (ulong)s.Bytes);
    /// <summary>Product (checked).</summary>
    public static Size operator *(Size a, long n) => new(checked(a.Bytes * n));
    /// <summary>Quotient.</summary>
    public static Size operator /(Size a, long n) => new(a.Bytes / n);
    /// <inheritdoc/>
    public int CompareTo(Size other) => Bytes.CompareTo(other.Bytes);
    /// <summary>Compares byte counts.</summary>
    public static bool operator <(Size a, Size b) => a.Bytes < b.Bytes;
    /// <summary>Compares byte counts.</summary>
    public static bool operator >(Size a, Size b) => a.Bytes > b.Bytes;
    /// <summary>Compares byte counts.</summary>
    public static bool operator <=(Size a, Size b) => a.Bytes <= b.Bytes;
    /// <summary>Compares byte counts.</summary>
    public static bool operator >=(Size a, Size b) => a.Bytes >= b.Bytes;
    /// <summary>Compares with a byte count (<c>size &gt; 0</c>), as the implicit conversion to long used to allow.</summary>
    public static bool operator <(Size a, long bytes) => a.Bytes < bytes;
    /// <summary>Compares with a byte count.</summary>
    public static bool operator >(Size a, long bytes) => a.Bytes > bytes;
    /// <summary>Compares with a byte count.</summary>
    public static bool operator <=(Size a, long bytes) => a.Bytes <= bytes;
    /// <summary>Compares with a byte count.</summary>
    public static bool operator >=(Size a, long bytes) => a.Bytes >= bytes;
    /// <summary>Compares a byte count with a size.</summary>
    public static bool operator <(long bytes, Size b) => bytes < b.Bytes;
    /// <summary>Compares a byte count with a size.</summary>
    public static bool operator >(long bytes, Size b) => bytes > b.Bytes;
    /// <summary>Compares a byte count with a size.</summary>
    public static bool operator <=(long bytes, Size b) => bytes <= b.Bytes;
    /// <summary>Compares a byte count with a size.</summary>
    public static bool operator >=(long bytes, Size b) => bytes >= b.Bytes;

    /// <summary>Throughput: <c>7.GiB() / elapsed</c> → "3.2 GiB/s".</summary>
    public static Rate operator /(Size a, TimeSpan t) => Rate.Of(a, t);

    /// <summary>Number of 4 KiB pages.</summary>
    public long Pages4K => Bytes >> 12;

    /// <summary>Parses "4096", "4K", "512M", "8G", "1T", "2MiB", "1.5G" (binary units, case-insensitive).</summary>
    public static Size Parse(string text)
    {
        if (TryParse(text, out var s, out var error)) return s;
        throw new FormatException(error);
    }

    /// <summary>Parses "512M", "4K", "1.5G", "4096" (binary units); false and why when it does not parse.</summary>
    public static bool TryParse(string? text, out Size size, out string error)
    {
        size = default;
        var t = (text ?? "").Trim();
        if (t.Length == 0) { error = "empty size; expected a number with an optional unit K, M, G or T (e.g. 512M, 8G)"; return false; }
        int i = 0;
        while (i < t.Length && (char.IsDigit(t[i]) || t[i] == '.')) i++;
        var num = t[..i];
        var unit = t[i..].Trim().ToUpperInvariant();
        if (unit.EndsWith("IB")) unit = unit[..^2];
        else if (unit.EndsWith('B') && unit.Length > 1) unit = unit[..^1];
        long mult = unit switch { "" or "B" => 1, "K" => KiBBytes, "M" => MiBBytes, "G" => GiBBytes, "T" => TiBBytes, _ => 0 };
        if (mult == 0 || !decimal.TryParse(num, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var value))
        {
            error = $"'{text}' is not a size; expected a number with an optional unit K, M, G or T (e.g. 4096, 512M, 8G, 1.5G)";
            return false;
        }
        var bytes = value * mult;
        if (bytes != decimal.Truncate(bytes) || bytes > long.MaxValue)
        {
            error = $"'{text}' is not a whole number of bytes below 2^63";
            return false;
        }
        size = new Size((long)bytes);
        error = "";
        return true;
    }

    /// <inheritdoc/>
    public override string ToString()
    {
        var b = Bytes;
        if (b != 0 && b % TiBBytes == 0) return $"{b / TiBBytes} TiB";
        if (b != 0 && b % GiBBytes == 0) return $"{b / GiBBytes} GiB";
        if (b != 0 && b % MiBBytes == 0) return $"{b / MiBBytes} MiB";
        // Past 1 MiB a readable figure beats an exact count of KiB ("60.56 MiB", not "62012 KiB");
        // ToExactString is the parseable form.
        if (b >= GiBBytes) return (b / (double)GiBBytes).ToString("0.##", CultureInfo.InvariantCulture) + " GiB";
        if (b >= MiBBytes) return (b / (double)MiBBytes).ToString("0.##", CultureInfo.InvariantCulture) + " MiB";
        if (b != 0 && b % KiBBytes == 0) return $"{b / KiBBytes} KiB";
        return $"{b} B";
    }

    /// <summary>The shortest exact form that <see cref="Parse"/> reads back: "8G", "1536K", "4097".</summary>
    public string ToExactString()
    {
        var b = Bytes;
        if (b != 0 && b % TiBBytes == 0) return $"{b / TiBBytes}T";
        if (b != 0 && b % GiBBytes == 0) return $"{b / GiBBytes}G";
        if (b != 0 && b % MiBBytes == 0) return $"{b / MiBBytes}M";
        if (b != 0 && b % KiBBytes == 0) return $"{b / KiBBytes}K";
        return b.ToString(CultureInfo.InvariantCulture);
    }
}

/// <summary>Writes a Size as its byte count; reads a byte count or a size string ("8G").</summary>
public sealed class SizeJsonConverter : JsonConverter<Size>
{
    /// <inheritdoc/>
    public override Size Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        reader.TokenType == JsonTokenType.String ? Size.Parse(reader.GetString()!) : new Size(reader.GetInt64());

    /// <inheritdoc/>
    public override void Write(Utf8JsonWriter writer, Size value, JsonSerializerOptions options) => writer.WriteNumberValue(value.Bytes);
}

/// <summary><c>1.GiB()</c>, <c>512.MiB()</c>, <c>4.KiB()</c>.</summary>
public static class SizeUnits
{
    /// <summary><paramref name="n"/> KiB.</summary>
    public static Size KiB(this int n) => new(checked(n * Size.KiBBytes));
    /// <summary><paramref name="n"/> MiB.</summary>
    public static Size MiB(this int n) => new(checked(n * Size.MiBBytes));
    /// <summary><paramref name="n"/> GiB.</summary>
    public static Size GiB(this int n) => new(checked(n * Size.GiBBytes));
    /// <summary><paramref name="n"/> TiB.</summary>
    public static Size TiB(this int n) => new(checked(n * Size.TiBBytes));
    /// <summary><paramref name="n"/> KiB.</summary>
    public static Size KiB(this long n) => new(checked(n * Size.KiBBytes));
    /// <summary><paramref name="n"/> MiB.</summary>
    public static Size MiB(this long n) => new(checked(n * Size.MiBBytes));
    /// <summary><paramref name="n"/> GiB.</summary>
    public static Size GiB(this long n) => new(checked(n * Size.GiBBytes));
    /// <summary><paramref name="n"/> TiB.</summary>
    public static Size TiB(this long n) => new(checked(n * Size.TiBBytes));
    /// <summary><paramref name="n"/> bytes.</summary>
    public static Size Bytes(this long n) => new(n);
    /// <summary><paramref name="n"/> bytes.</summary>
    public static Size Bytes(this int n) => new(n);
}
