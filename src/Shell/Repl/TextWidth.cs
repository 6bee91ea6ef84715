using System.Buffers;
using System.Globalization;
using System.Text;

namespace VirtLab.Shell.Repl;

/// <summary>
/// How many terminal columns text takes (what wcwidth answers in C; .NET has none): East Asian wide and fullwidth
/// characters and emoji take 2, combining marks and other zero-width characters 0, the rest 1. A small table of the
/// wide ranges is enough for a line editor (Spectre.Console's cell width works on single UTF-16 chars, so it cannot see
/// emoji outside the basic plane).
/// </summary>
internal static class TextWidth
{
    // Wide (W) and fullwidth (F) ranges of Unicode's East Asian Width, merged where they touch; emoji presentation blocks.
    private static readonly (int From, int To)[] Wide =
    [
        (0x1100, 0x115F), (0x231A, 0x231B), (0x2329, 0x232A), (0x23E9, 0x23EC), (0x23F0, 0x23F0), (0x23F3, 0x23F3),
        (0x25FD, 0x25FE), (0x2614, 0x2615), (0x2648, 0x2653), (0x267F, 0x267F), (0x2693, 0x2693), (0x26A1, 0x26A1),
        (0x26AA, 0x26AB), (0x26BD, 0x26BE), (0x26C4, 0x26C5), (0x26CE, 0x26CE), (0x26D4, 0x26D4), (0x26EA, 0x26EA),
        (0x26F2, 0x26F3), (0x26F5, 0x26F5), (0x26FA, 0x26FA), (0x26FD, 0x26FD), (0x2705, 0x2705), (0x270A, 0x270B),
        (0x2728, 0x2728), (0x274C, 0x274C), (0x274E, 0x274E), (0x2753, 0x2755), (0x2757, 0x2757), (0x2795, 0x2797),
        (0x27B0, 0x27B0), (0x27BF, 0x27BF), (0x2B1B, 0x2B1C), (0x2B50, 0x2B50), (0x2B55, 0x2B55),
        (0x2E80, 0x303E), (0x3041, 0x33FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xA000, 0xA4CF), (0xA960, 0xA97F),
        (0xAC00, 0xD7A3), (0xF900, 0xFAFF), (0xFE10, 0xFE19), (0xFE30, 0xFE6F), (0xFF00, 0xFF60), (0xFFE0, 0xFFE6),
        (0x16FE0, 0x16FE4), (0x17000, 0x18AFF), (0x1B000, 0x1B2FF), (0x1F004, 0x1F004), (0x1F0CF, 0x1F0CF),
        (0x1F18E, 0x1F18E), (0x1F191, 0x1F19A), (0x1F200, 0x1F202), (0x1F210, 0x1F23B), (0x1F240, 0x1F248),
        (0x1F250, 0x1F251), (0x1F260, 0x1F265), (0x1F300, 0x1F64F), (0x1F680, 0x1F6FF), (0x1F7E0, 0x1F7EB),
        (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF), (0x20000, 0x2FFFD), (0x30000, 0x3FFFD),
    ];

    /// <summary>Columns of one code point: 0, 1 or 2.</summary>
    public static int Of(Rune r)
    {
        var v = r.Value;
        if (v < 0x300) return v < 0x20 || v is >= 0x7F and < 0xA0 ? 0 : 1; // ASCII and Latin-1 quickly; controls draw nothing
        switch (Rune.GetUnicodeCategory(r))
        {
            case UnicodeCategory.NonSpacingMark:
            case UnicodeCategory.EnclosingMark:
            case UnicodeCategory.Format:          // ZWJ, ZWNJ, soft hyphen…
                return 0;
        }
        if (v is >= 0x1160 and <= 0x11FF) return 0; // Hangul medial vowels and final consonants join the syllable before
        int lo = 0, hi = Wide.Length - 1;
        while (lo <= hi)
        {
            var mid = (lo + hi) / 2;
            if (v < Wide[mid].From) hi = mid - 1;
            else if (v > Wide[mid].To) lo = mid + 1;
            else return 2;
        }
        return 1;
    }

    /// <summary>Columns of <paramref name="s"/>[<paramref name="from"/>..<paramref name="to"/>).</summary>
    public static int Of(string s, int from = 0, int to = -1)
    {
        if (to < 0) to = s.Length;
        var width = 0;
        for (var i = from; i < to;)
        {
            if (Rune.DecodeFromUtf16(s.AsSpan(i, to - i), out var r, out var n) != OperationStatus.Done) { width++; i++; continue; }
            width += Of(r);
            i += n;
        }
        return width;
    }

    /// <summary>The index where <paramref name="s"/>'s rows of at most <paramref name="columns"/> columns start; a row
    /// that fills its width exactly is followed by an empty one (the caret after its last character goes there).</summary>
    public static List<int> Rows(string s, int columns)
    {
        var starts = new List<int> { 0 };
        var used = 0;
        for (var i = 0; i < s.Length;)
        {
            var n = 1;
            var w = Rune.DecodeFromUtf16(s.AsSpan(i), out var r, out n) == OperationStatus.Done ? Of(r) : 1;
            if (used + w > columns && used > 0) { starts.Add(i); used = 0; }
            used += w;
            i += Math.Max(1, n);
        }
        if (used >= columns) starts.Add(s.Length);
        return starts;
    }

    /// <summary><paramref name="s"/> cut to at most <paramref name="columns"/> columns, with "…" if cut.</summary>
    public static string Fit(string s, int columns)
    {
        if (s.Length <= columns && Of(s) <= columns) return s;
        var used = 0;
        for (var i = 0; i < s.Length;)
        {
            var n = 1;
            var w = Rune.DecodeFromUtf16(s.AsSpan(i), out var r, out n) == OperationStatus.Done ? Of(r) : 1;
            if (used + w > columns - 1) return s[..i] + "…";
            used += w;
            i += Math.Max(1, n);
        }
        return s;
    }

    /// <summary>The caret stop after <paramref name="at"/>: the end of the character there (a surrogate pair, a letter
    /// with its combining marks, an emoji sequence count as one).</summary>
    public static int Next(string s, int at) => at >= s.Length ? s.Length : at + Math.Max(1, StringInfo.GetNextTextElementLength(s, at));

    /// <summary>The caret stop before <paramref name="at"/>.</summary>
    public static int Previous(string s, int at)
    {
        if (at <= 0) return 0;
        var lineStart = s.LastIndexOf('\n', at - 1) + 1;
        if (lineStart == at) return at - 1; // the line break
        var stop = lineStart;
        while (true)
        {
            var next = Next(s, stop);
            if (next >= at) return stop;
            stop = next;
        }
    }
}
