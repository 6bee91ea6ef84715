using System.Buffers.Binary;
using FsCheck;
using FsCheck.Fluent;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using Xunit;
using VirtLab.Tests;

namespace VirtLab.Plugins.Balloon.Tests;

public class FormatTests
{
    /// <summary>Random page sets: dense runs, sparse pages and everything between, over a window of up to 64 Ki pages.</summary>
    static readonly Arbitrary<(long basePfn, long[] pages)> PageSets = Arb.From(
        from basePfn in Gen.Choose(0, 1 << 20).Select(x => (long)x * 64)
        from span in Gen.Choose(1, 1 << 16)
        from runs in Gen.ListOf(from s in Gen.Choose(0, span - 1) from n in Gen.Choose(1, 700) select (s, n))
        select (basePfn, runs.SelectMany(r => Enumerable.Range(r.s, Math.Min(r.n, span - r.s)).Select(p => basePfn + p)).Distinct().Order().ToArray()));

    static long[] Expand(IEnumerable<PageRun> runs) => runs.SelectMany(r => Enumerable.Range(0, (int)r.Count).Select(k => r.First + k)).Order().ToArray();

    static List<long> ViaPfn(long[] pages)
    {
        var got = new List<long>();
        var buf = new byte[1024];
        for (int i = 0; i < pages.Length; i += 256)
        {
            var chunk = pages.AsSpan(i, Math.Min(256, pages.Length - i));
            int n = PfnArrayFormat.Encode(chunk, buf);
            var runs = new List<PageRun>();
            Assert.True(PfnArrayFormat.TryDecode(buf.AsSpan(0, n), runs, out var e), e.ToString());
            got.AddRange(Expand(runs));
        }
        return got;
    }

    static List<long> ViaBitmap(long basePfn, long[] pages, int dataSize = PageBitmapFormat.DriverDataSize)
    {
        var span = pages.Length == 0 ? 1 : pages[^1] - basePfn + 1;
        var bitmap = DirtyBitmap.FromPages(span, pages.Select(p => p - basePfn));
        var got = new List<long>();
        var req = new byte[PageBitmapFormat.ResponseHeaderSize + dataSize];
        int word = 0;
        while (word < bitmap.Words.Length)
        {
            int n = PageBitmapFormat.Encode(bitmap, basePfn, ref word, req.AsSpan(PageBitmapFormat.ResponseHeaderSize));
            if (n == 0) { Assert.Equal(bitmap.Words.Length, word); break; }
            PageBitmapFormat.WriteResponseHeader(req, 7, n);
            var runs = new List<PageRun>();
            Assert.True(PageBitmapFormat.TryDecode(req.AsSpan(0, PageBitmapFormat.ResponseHeaderSize + n), runs, out var e), e.ToString());
            got.AddRange(Expand(runs));
        }
        return got;
    }

    static List<long> ViaRanges(long[] pages)
    {
        var ranges = new List<PageRun>();
        PageRangeFormat.Coalesce(pages, ranges);
        var got = new List<long>();
        var buf = new byte[PageRangeFormat.DriverEntries * PageRangeFormat.EntrySize];
        for (int i = 0; i < ranges.Count; i += PageRangeFormat.DriverEntries)
        {
            int n = PageRangeFormat.Encode(ranges.GetRange(i, Math.Min(PageRangeFormat.DriverEntries, ranges.Count - i)).ToArray(), buf);
            var runs = new List<PageRun>();
            Assert.True(PageRangeFormat.TryDecode(buf.AsSpan(0, n), runs, out var e), e.ToString());
            got.AddRange(Expand(runs));
        }
        return got;
    }

    [Fact]
    public void Three_transports_carry_identical_page_sets() => Prop.ForAll(PageSets, t =>
    {
        var pfn = ViaPfn(t.pages);
        var bmp = ViaBitmap(t.basePfn, t.pages).Order();
        var small = ViaBitmap(t.basePfn, t.pages, 24).Order(); // a tiny data buffer: many requests, resumed mid-run
        var rng = ViaRanges(t.pages);
        return pfn.SequenceEqual(t.pages) && bmp.SequenceEqual(t.pages) && small.SequenceEqual(t.pages) && rng.SequenceEqual(t.pages);
    }).Check(PropertyRuns.Quick);

    [Fact]
    public void Bitmap_encodes_whole_words_as_runs_and_is_far_smaller_than_pfns()
    {
        var pages = Enumerable.Range(0, 1 << 18).Select(i => 0x100000L + i).ToArray(); // 1 GiB, contiguous
        var bitmap = DirtyBitmap.FromPages(pages.Length, Enumerable.Range(0, pages.Length).Select(i => (long)i));
        var data = new byte[PageBitmapFormat.DriverDataSize];
        int word = 0;
        int n = PageBitmapFormat.Encode(bitmap, 0x100000, ref word, data);
        Assert.Equal(8, n); // one zero-length header: a run of 2^18 pages
        Assert.Equal(PageBitmapFormat.Head(0x100000, 12 + 18, 0), BinaryPrimitives.ReadUInt64LittleEndian(data));
    }

    [Fact]
    public void Pfn_arrays_refuse_bad_lengths()
    {
        var runs = new List<PageRun>();
        Assert.False(PfnArrayFormat.TryDecode(new byte[0], runs, out var e)); Assert.Equal(BalloonErrorKind.Malformed, e.Kind);
        Assert.False(PfnArrayFormat.TryDecode(new byte[6], runs, out e)); Assert.Equal(BalloonErrorKind.Malformed, e.Kind);
        Assert.False(PfnArrayFormat.TryDecode(new byte[257 * 4], runs, out e)); Assert.Equal(BalloonErrorKind.TooLarge, e.Kind);
        Assert.Contains("257", e.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => PfnArrayFormat.Encode([1L << 32], new byte[4]));
    }

    static byte[] BitmapRequest(uint dataLen, params ulong[] words)
    {
        var r = new byte[8 + words.Length * 8];
        PageBitmapFormat.WriteResponseHeader(r, 1, 0);
        BinaryPrimitives.WriteUInt32LittleEndian(r.AsSpan(4), dataLen);
        for (int i = 0; i < words.Length; i++) BinaryPrimitives.WriteUInt64LittleEndian(r.AsSpan(8 + i * 8), words[i]);
        return r;
    }

    [Fact]
    public void Bitmap_refuses_overflow_past_buffer_and_lying_lengths()
    {
        var runs = new List<PageRun>();
        void Refused(byte[] req, BalloonErrorKind kind)
        {
            Assert.False(PageBitmapFormat.TryDecode(req, runs, out var e));
            Assert.Equal(kind, e.Kind);
        }
        Refused(BitmapRequest(16, PageBitmapFormat.Head(0, 12, 0)), BalloonErrorKind.TooLarge);               // data_len > descriptors
        Refused(BitmapRequest(0, PageBitmapFormat.Head(0, 12, 0)), BalloonErrorKind.Malformed);               // disagree the other way
        Refused(BitmapRequest(8, PageBitmapFormat.Head(0, 12, 2)), BalloonErrorKind.PastBuffer);              // 2 words, none present
        Refused(BitmapRequest(8, (ulong)(1L << 52) - 1 | 63UL << 52), BalloonErrorKind.Overflow);             // 2^51 pages from the top PFN
        Refused(BitmapRequest(8, 5UL << 52), BalloonErrorKind.Malformed);                                     // shift 5 < 12
        Refused(BitmapRequest(16, PageBitmapFormat.Head((1L << 52) - 32, 12, 1), ulong.MaxValue), BalloonErrorKind.Overflow); // a word past the top
        var bad = BitmapRequest(8, PageBitmapFormat.Head(0, 12, 0)); bad[0] = 3;
        Refused(bad, BalloonErrorKind.Malformed);
        Assert.True(PageBitmapFormat.TryDecode(BitmapRequest(16, PageBitmapFormat.Head(64, 13, 1), 0b1011), runs, out _));
        Assert.Equal([new PageRun(64, 4), new PageRun(70, 2)], runs); // 8 KiB units: bits 0,1 → 4 pages; bit 3 → 2 pages
    }

    [Fact]
    public void Ranges_refuse_zero_overflowing_and_oversized_entries()
    {
        var runs = new List<PageRun>();
        var one = new byte[16];
        BinaryPrimitives.WriteUInt64LittleEndian(one, 5);
        Assert.False(PageRangeFormat.TryDecode(one, runs, out var e)); Assert.Equal(BalloonErrorKind.Malformed, e.Kind);
        BinaryPrimitives.WriteUInt64LittleEndian(one.AsSpan(8), ulong.MaxValue);
        Assert.False(PageRangeFormat.TryDecode(one, runs, out e)); Assert.Equal(BalloonErrorKind.Overflow, e.Kind);
        Assert.False(PageRangeFormat.TryDecode(new byte[17], runs, out e)); Assert.Equal(BalloonErrorKind.Malformed, e.Kind);
        Assert.False(PageRangeFormat.TryDecode(new byte[16 * 4097], runs, out e)); Assert.Equal(BalloonErrorKind.TooLarge, e.Kind);
    }

    [Fact]
    public void Stats_parse_known_tags_and_count_unknown_ones()
    {
        var buf = new byte[30];
        StatsFormat.Encode([new BalloonStat(VirtioBalloon.S_MEMFREE, 123), new BalloonStat(42, 1), new BalloonStat(VirtioBalloon.S_HTLB_PGFAIL, 9)], buf);
        var values = new ulong?[10];
        Assert.True(StatsFormat.TryDecode(buf, values, out var unknown, out _));
        Assert.Equal(1, unknown);
        Assert.Equal(123UL, values[VirtioBalloon.S_MEMFREE]);
        Assert.Equal(9UL, values[VirtioBalloon.S_HTLB_PGFAIL]);
        Assert.Null(values[VirtioBalloon.S_SWAP_IN]);
        Assert.False(StatsFormat.TryDecode(buf.AsSpan(0, 29), values, out _, out var e));
        Assert.Equal(BalloonErrorKind.Malformed, e.Kind);
    }
}
