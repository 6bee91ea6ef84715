using System.Collections;
using System.Globalization;

namespace VirtLab.Sdk.Measure;

/// <summary>A recipe argument that is malformed or of the wrong kind. The shell reports it as a usage error (exit 3).</summary>
public sealed class RecipeArgumentException(string message) : ArgumentException(message);

/// <summary>
/// The arguments after <c>--</c> on <c>virtlab run FILE -- --memory 8G --inflate=7G --verbose</c>.
/// Names are case-insensitive and stored without dashes; a later occurrence wins. An option followed by
/// another option (or nothing) is a flag and has a null value. Tokens that are not options are positional;
/// a second <c>--</c> makes everything after it positional. Typed access goes through
/// <see cref="RecipeGlobals.Arg{T}(string, T)"/>.
/// </summary>
public sealed class RecipeArgs : IReadOnlyDictionary<string, string?>
{
    private readonly Dictionary<string, string?> _named = new(StringComparer.OrdinalIgnoreCase);
    private readonly List<string> _order = [];

    /// <summary>No arguments.</summary>
    public static RecipeArgs Empty { get; } = new([]);

    /// <exception cref="RecipeArgumentException">A single-dash option (<c>-m</c>) or an empty name (<c>--=x</c>).</exception>
    public RecipeArgs(IEnumerable<string> argv)
    {
        Raw = argv.ToArray();
        var positional = new List<string>();
        for (int i = 0; i < Raw.Count; i++)
        {
            var tok = Raw[i];
            if (tok == "--") { positional.AddRange(Raw.Skip(i + 1)); break; }
            if (!tok.StartsWith("--"))
            {
                // "-5" is a positional number; "-m" is almost surely a mistyped option, which would be silently ignored.
                if (tok.Length > 1 && tok[0] == '-' && char.IsLetter(tok[1]))
                    throw new RecipeArgumentException($"'{tok}': recipe options take two dashes (--name value or --name=value)");
                positional.Add(tok);
                continue;
            }
            string name;
            string? value;
            int eq = tok.IndexOf('=');
            if (eq >= 0) { name = tok[2..eq]; value = tok[(eq + 1)..]; }
            else
            {
                name = tok[2..];
                value = i + 1 < Raw.Count && !Raw[i + 1].StartsWith("--") ? Raw[++i] : null;
            }
            name = Normalize(name);
            if (name.Length == 0) throw new RecipeArgumentException($"'{tok}': option without a name");
            if (!_named.ContainsKey(name)) _order.Add(name);
            _named[name] = value;
        }
        _positional = positional;
    }

    private readonly List<string> _positional;
    private volatile bool _positionalRead;

    /// <summary>Parses the argument list exactly as given on the command line.</summary>
    public static RecipeArgs Parse(params string[] argv) => new(argv);

    /// <summary>The tokens as given, for the run record.</summary>
    public IReadOnlyList<string> Raw { get; }

    /// <summary>Tokens that are not options (and everything after a second <c>--</c>).</summary>
    public IReadOnlyList<string> Positional
    {
        get
        {
            _positionalRead = true;
            return _positional;
        }
    }

    /// <summary>Positional tokens the recipe never looked at (<see cref="Positional"/> unread): likely an option without its
    /// dashes (<c>memory 8G</c>); the shell warns.</summary>
    public IReadOnlyList<string> UnreadPositional => _positionalRead ? [] : _positional;

    /// <summary>Option names in order of first appearance (without dashes).</summary>
    public IEnumerable<string> Keys => _order;

    /// <summary>Whether <c>--name</c> was given (with or without a value).</summary>
    public bool Has(string name) => _named.ContainsKey(Normalize(name));

    /// <summary>The raw value of <c>--name</c>; null when absent or given as a bare flag.</summary>
    public string? this[string name] => _named.TryGetValue(Normalize(name), out var v) ? v : null;

    /// <summary>The value of <c>--name</c>, if given (null for a bare flag).</summary>
    public bool TryGetValue(string name, out string? value) => _named.TryGetValue(Normalize(name), out value);
    /// <summary>Whether <c>--name</c> was given.</summary>
    public bool ContainsKey(string name) => Has(name);
    /// <summary>Number of named options given.</summary>
    public int Count => _order.Count;
    /// <summary>The options' values in the order given.</summary>
    public IEnumerable<string?> Values => _order.Select(k => _named[k]);
    /// <inheritdoc/>
    public IEnumerator<KeyValuePair<string, string?>> GetEnumerator() => _order.Select(k => KeyValuePair.Create(k, _named[k])).GetEnumerator();
    IEnumerator IEnumerable.GetEnumerator() => GetEnumerator();

    /// <inheritdoc/>
    public override string ToString() => string.Join(' ', Raw);

    /// <summary>Accepts "memory" and "--memory" alike.</summary>
    internal static string Normalize(string name) => name.TrimStart('-');
}

/// <summary>Text → typed value for recipe arguments. Errors read "'x' is not a Y; expected Z" so they can be prefixed with the option.</summary>
internal static class ArgParser
{
    public const string SupportedTypes = "Size, int, long, double, bool, string, TimeSpan or an enum (or a Nullable of one)";

    public static bool IsSupported(Type t)
    {
        t = Nullable.GetUnderlyingType(t) ?? t;
        return t == typeof(Size) || t == typeof(int) || t == typeof(long) || t == typeof(double) || t == typeof(bool)
            || t == typeof(string) || t == typeof(TimeSpan) || t.IsEnum;
    }

    /// <summary>What a value of type <paramref name="t"/> looks like, for "needs a value" errors.</summary>
    public static string Describe(Type t)
    {
        t = Nullable.GetUnderlyingType(t) ?? t;
        if (t == typeof(Size)) return "a size, e.g. 512M, 8G";
        if (t == typeof(int) || t == typeof(long)) return "an integer";
        if (t == typeof(double)) return "a number, e.g. 0.5";
        if (t == typeof(bool)) return "true or false";
        if (t == typeof(TimeSpan)) return "a duration, e.g. 500ms, 2s, 1.5m";
        if (t.IsEnum) return "one of " + string.Join(", ", EnumNames(t));
        return "text";
    }

    public static bool TryParse(Type t, string text, out object? value, out string error)
    {
        value = null;
        error = "";
        t = Nullable.GetUnderlyingType(t) ?? t;
        var s = text.Trim();
        if (t == typeof(string)) { value = text; return true; }
        if (t == typeof(Size))
        {
            if (!Size.TryParse(s, out var size, out error)) return false;
            value = size;
            return true;
        }
        if (t == typeof(int) || t == typeof(long))
        {
            if (TryParseInteger(s, out var n) && (t == typeof(long) || n is >= int.MinValue and <= int.MaxValue))
            {
                value = t == typeof(int) ? (object)(int)n : n;
                return true;
            }
            error = $"'{text}' is not {(t == typeof(int) ? "a 32-bit" : "a 64-bit")} integer; expected e.g. 42, -1, 1_000_000 or 0x1000";
            return false;
        }
        if (t == typeof(double))
        {
            if (double.TryParse(s.Replace("_", ""), NumberStyles.Float, CultureInfo.InvariantCulture, out var d)) { value = d; return true; }
            error = $"'{text}' is not a number; expected e.g. 0.5, 3, 1e6";
            return false;
        }
        if (t == typeof(bool))
        {
            switch (s.ToLowerInvariant())
            {
                case "true" or "yes" or "on" or "1": value = true; return true;
                case "false" or "no" or "off" or "0": value = false; return true;
            }
            error = $"'{text}' is not a boolean; expected true/false, yes/no, on/off or 1/0 (a bare --flag means true)";
            return false;
        }
        if (t == typeof(TimeSpan))
        {
            if (TryParseDuration(s, out var ts)) { value = ts; return true; }
            error = $"'{text}' is not a duration; expected a number with a unit ns, us, ms, s, m or h (e.g. 500ms, 2s, 1.5m), plain seconds, or hh:mm:ss";
            return false;
        }
        if (t.IsEnum)
        {
            // "anonymous_thp", "anonymous-thp" and "AnonymousThp" all name AnonymousThp; numbers are refused.
            var key = Squash(s);
            foreach (var name in Enum.GetNames(t))
                if (key.Length > 0 && string.Equals(Squash(name), key, StringComparison.OrdinalIgnoreCase)) { value = Enum.Parse(t, name); return true; }
            error = $"'{text}' is not a {t.Name}; expected one of {string.Join(", ", EnumNames(t))}";
            return false;
        }
        throw new NotSupportedException($"recipe arguments of type {t} are not supported; use {SupportedTypes}");
    }

    /// <summary>A value written so that parsing it again gives it back (for the run record's args).</summary>
    public static string? Format(object? value) => value switch
    {
        null => null,
        Size s => s.ToExactString(),
        double d => d.ToString("R", CultureInfo.InvariantCulture),
        bool b => b ? "true" : "false",
        TimeSpan ts => FormatDuration(ts),
        Enum e => e.ToString(),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => value.ToString(),
    };

    private static IEnumerable<string> EnumNames(Type t) => Enum.GetNames(t).Select(n => n.ToLowerInvariant());

    private static string Squash(string s) => s.Replace("_", "").Replace("-", "");

    private static bool TryParseInteger(string s, out long n)
    {
        s = s.Replace("_", "");
        bool neg = s.StartsWith('-');
        var body = neg || s.StartsWith('+') ? s[1..] : s;
        if (body.StartsWith("0x", StringComparison.OrdinalIgnoreCase))
        {
            if (ulong.TryParse(body[2..], NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out var u) && u <= (neg ? 1UL << 63 : long.MaxValue))
            {
                n = neg ? unchecked(-(long)u) : (long)u;
                return true;
            }
            n = 0;
            return false;
        }
        return long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out n);
    }

    private static bool TryParseDuration(string s, out TimeSpan ts)
    {
        ts = default;
        if (s.Contains(':')) return TimeSpan.TryParse(s, CultureInfo.InvariantCulture, out ts) && ts >= TimeSpan.Zero;
        int i = 0;
        while (i < s.Length && (char.IsDigit(s[i]) || s[i] == '.' || s[i] == 'e' && i > 0 || s[i] == '_')) i++;
        var unit = s[i..].Trim().ToLowerInvariant();
        double perUnitTicks = unit switch
        {
            "" or "s" or "sec" => TimeSpan.TicksPerSecond,
            "ms" => TimeSpan.TicksPerMillisecond,
            "us" or "µs" => TimeSpan.TicksPerMicrosecond,
            "ns" => TimeSpan.TicksPerMicrosecond / 1000.0,
            "m" or "min" => TimeSpan.TicksPerMinute,
            "h" => TimeSpan.TicksPerHour,
            _ => 0,
        };
        if (perUnitTicks == 0 || !double.TryParse(s[..i].Replace("_", ""), NumberStyles.AllowDecimalPoint | NumberStyles.AllowExponent,
                CultureInfo.InvariantCulture, out var v))
            return false;
        var ticks = v * perUnitTicks;
        if (!double.IsFinite(ticks) || ticks > TimeSpan.MaxValue.Ticks) return false;
        ts = TimeSpan.FromTicks((long)Math.Round(ticks));
        return true;
    }

    private static string FormatDuration(TimeSpan ts)
    {
        if (ts.Ticks % TimeSpan.TicksPerSecond == 0) return $"{ts.Ticks / TimeSpan.TicksPerSecond}s";
        if (ts.Ticks % TimeSpan.TicksPerMillisecond == 0) return $"{ts.Ticks / TimeSpan.TicksPerMillisecond}ms";
        return (ts.Ticks / (double)TimeSpan.TicksPerMicrosecond).ToString("R", CultureInfo.InvariantCulture) + "us";
    }
}
