using VirtLab.Sdk.Machine;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>DirtyBitmap against a bool[] model, over sizes around word and vector boundaries and random densities.</summary>
public class DirtyBitmapTests
{
    static readonly long[] Sizes = [0, 1, 63, 64, 65, 127, 128, 255, 256, 257, 1000, 1024, 1031, 4096 + 17, 20000];

    static IEnumerable<(long pages, double density, int seed)> Cases()
    {
        int seed = 1;
        foreach (var n in Sizes)
            foreach (var d in new[] { 0.0, 0.001, 0.05, 0.5, 0.97, 1.0 })
                yield return (n, d, seed++);
    }

    static (DirtyBitmap b, bool[] m) Random(long pages, double density, int seed)
    {
        var rng = new Random(seed);
        var b = new DirtyBitmap(pages);
        var m = new bool[pages];
        // clustered bits too, so runs of all-ones words and long zero gaps both occur
        for (long i = 0; i < pages; i++)
        {
            if (rng.NextDouble() < density) { m[i] = true; b.Set(i); }
        }
        if (pages > 300 && density is > 0 and < 1)
        {
            long s = rng.NextInt64(pages - 200);
            for (long i = s; i < s + 150; i++) { m[i] = true; }
            b.SetRange(s, 150);
        }
        return (b, m);
    }

    [Fact]
    public void Matches_the_model()
    {
        foreach (var (pages, density, seed) in Cases())
        {
            var (b, m) = Random(pages, density, seed);
            var set = Enumerable.Range(0, (int)pages).Where(i => m[i]).Select(i => (long)i).ToArray();
            Assert.Equal(set.Length, b.Count);
            Assert.Equal(set, b.ToArray());
            Assert.Equal(set, b.SetPages.ToArray());
            var viaAction = new List<long>();
            b.ForEachSetPage(viaAction.Add);
            Assert.Equal(set, viaAction);
            var copied = new long[set.Length + 3];
            Assert.Equal(set.Length, b.CopySetPages(copied));
            Assert.Equal(set, copied.Take(set.Length));
            if (set.Length > 0) Assert.Throws<ArgumentException>(() => b.CopySetPages(new long[set.Length - 1]));
            Assert.Equal(set.Length == 0, b.IsEmpty);
            for (long i = 0; i < pages; i++) Assert.Equal(m[i], b[i]);

            // runs: maximal, ordered, covering exactly the set pages
            var runs = b.Runs.ToArray();
            Assert.Equal(set, runs.SelectMany(r => Enumerable.Range(0, (int)r.Count).Select(k => r.First + k)).ToArray());
            for (int i = 1; i < runs.Length; i++) Assert.True(runs[i].First > runs[i - 1].End);

            // next set / clear
            var rng = new Random(seed);
            for (int k = 0; k < 50 && pages > 0; k++)
            {
                long from = rng.NextInt64(pages + 2) - 1;
                long ns = -1, nc = pages;
                for (long i = Math.Max(0, from); i < pages; i++) if (m[i]) { ns = i; break; }
                for (long i = Math.Max(0, from); i < pages; i++) if (!m[i]) { nc = i; break; }
                Assert.Equal(ns, b.NextSetPage(from));
                Assert.Equal(nc, b.NextClearPage(from));
                long first = rng.NextInt64(pages + 1), count = rng.NextInt64(pages - first + 1);
                Assert.Equal(Enumerable.Range((int)first, (int)count).Count(i => m[i]), b.CountRange(first, count));
            }
        }
    }

    [Fact]
    public void Set_and_clear_ranges_match_the_model()
    {
        var rng = new Random(42);
        foreach (var pages in Sizes.Where(s => s > 0))
        {
            var b = new DirtyBitmap(pages);
            var m = new bool[pages];
            for (int k = 0; k < 40; k++)
            {
                long first = rng.NextInt64(pages), count = rng.NextInt64(pages - first + 1);
                bool set = rng.Next(2) == 0;
                if (set) b.SetRange(first, count); else b.ClearRange(first, count);
                for (long i = first; i < first + count; i++) m[i] = set;
                Assert.Equal(m.Count(x => x), b.Count);
            }
            for (long i = 0; i < pages; i++) Assert.Equal(m[i], b[i]);
            b.SetAll();
            Assert.Equal(pages, b.Count);
            Assert.Equal(new[] { new PageRun(0, pages) }, b.Runs.ToArray());
            // the tail past Pages stays zero: a wrapped copy of the words is accepted
            Assert.Equal(b, new DirtyBitmap(pages, (ulong[])b.Words.Clone()));
            b.ClearAll();
            Assert.True(b.IsEmpty);
        }
    }

    [Fact]
    public void Bitwise_operations_match_the_model()
    {
        foreach (var (pages, density, seed) in Cases())
        {
            var (a, ma) = Random(pages, density, seed);
            var (b, mb) = Random(pages, 1 - density, seed + 1000);
            Assert.Equal(Enumerable.Range(0, (int)pages).Count(i => ma[i] | mb[i]), a.Clone().Or(b).Count);
            Assert.Equal(Enumerable.Range(0, (int)pages).Count(i => ma[i] & mb[i]), a.Clone().And(b).Count);
            Assert.Equal(Enumerable.Range(0, (int)pages).Count(i => ma[i] & !mb[i]), a.Clone().AndNot(b).Count);
            Assert.Equal(Enumerable.Range(0, (int)pages).Count(i => ma[i] ^ mb[i]), a.Clone().Xor(b).Count);
            // (a | b) &~ b == a &~ b
            Assert.Equal(a.Clone().AndNot(b), a.Clone().Or(b).AndNot(b));
            Assert.Equal(a, DirtyBitmap.FromPages(pages, a.SetPages));
        }
    }

    [Fact]
    public void Kernel_layout_and_errors()
    {
        var b = new DirtyBitmap(130);
        Assert.Equal(3, b.Words.Length); // ALIGN(npages, 64) / 8 bytes
        b.Set(0); b.Set(64); b.Set(129);
        Assert.Equal(new ulong[] { 1, 1, 2 }, b.Words);
        Assert.Throws<ArgumentOutOfRangeException>(() => b.Set(130));
        Assert.Throws<ArgumentOutOfRangeException>(() => b.SetRange(100, 31));
        Assert.Throws<ArgumentException>(() => new DirtyBitmap(130, new ulong[2]));
        Assert.Throws<ArgumentException>(() => new DirtyBitmap(130, [0, 0, 4])); // bit 130 set
        Assert.Throws<ArgumentException>(() => b.Or(new DirtyBitmap(129)));
        Assert.Equal("3 of 130 pages dirty (12 KiB)", b.ToString());
    }

    [Fact]
    public void Scans_never_report_pages_past_the_end_even_if_the_words_were_written_there()
    {
        var b = new DirtyBitmap(130);
        b.SetRange(120, 10);                 // pages 120 … 129
        b.Words[^1] |= ulong.MaxValue << 2;  // bits 130 … 191 through the shared words
        var expected = Enumerable.Range(120, 10).Select(i => (long)i).ToArray();
        Assert.Equal(expected, b.SetPages.ToArray());
        Assert.Equal(expected, b.ToArray());
        Assert.Equal(new[] { new PageRun(120, 10) }, b.Runs.ToArray());
        Assert.Equal(10, b.Count);
        Assert.Equal(-1, b.NextSetPage(130));
        b.ClearRange(120, 10);
        Assert.True(b.IsEmpty);
        Assert.Equal(0, b.Count);
        Assert.Equal(-1, b.NextSetPage(0));
        Assert.Empty(b.SetPages);
        Assert.Empty(b.Runs);
        var all = new DirtyBitmap(130);
        all.Words.AsSpan().Fill(ulong.MaxValue);
        Assert.Equal(new[] { new PageRun(0, 130) }, all.Runs.ToArray());
        Assert.Equal(130, all.SetPages.Count());
    }

    [Fact]
    public void Runs_across_all_ones_and_zero_stretches_longer_than_a_vector_step()
    {
        var b = new DirtyBitmap(64 * 100 + 5);
        b.SetRange(3, 64 * 40);               // crosses 40 words, 20+ of them all ones
        b.SetRange(64 * 80 + 61, 1);          // after a 2000+ page gap
        b.SetRange(64 * 81, 64 * 19 + 5);     // starts on a word boundary, runs to the very end
        Assert.Equal(new[] { new PageRun(3, 64 * 40), new PageRun(64 * 80 + 61, 1), new PageRun(64 * 81, 64 * 19 + 5) }, b.Runs.ToArray());
        b.Set(64 * 80 + 62);                  // grows the middle run
        b.Set(64 * 80 - 1);                   // the last bit of the word before: a new run
        Assert.Equal(new[] { new PageRun(3, 64 * 40), new PageRun(64 * 80 - 1, 1), new PageRun(64 * 80 + 61, 2), new PageRun(64 * 81, 64 * 19 + 5) }, b.Runs.ToArray());
    }
}
