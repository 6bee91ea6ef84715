using System.Runtime.CompilerServices;
using System.Numerics;
using VirtLab.Plugins.Vfio.Type1;

namespace VirtLab.Plugins.Vfio.Tracking;

/// <summary>
/// One dirty bit per 4 KiB page over the whole 64-bit IOVA space, stored in 1 GiB chunks (4096 words, 32 KiB)
/// allocated on first use: what the leaf level of an IO page table holds (the IOPTE dirty bits iommufd reads), or a
/// device's own DMA log. Memory follows the chunks touched, not the width of the space.
/// </summary>
internal sealed unsafe class SparsePageBitmap : IDisposable
{
    public const int ChunkShift = 18;                 // pages per chunk = 2^18 (1 GiB of IOVA)
    const ulong ChunkPages = 1UL << ChunkShift;
    const int ChunkWords = (int)(ChunkPages / 64);
    readonly Dictionary<ulong, WordBuffer> chunks = [];

    public long Bytes => (long)chunks.Count * ChunkWords * 8;

    public int Chunks => chunks.Count;

    WordBuffer Chunk(ulong index, bool create)
    {
        if (chunks.TryGetValue(index, out var c)) return c;
        if (!create) return null!;
        c = new WordBuffer(ChunkWords);
        chunks[index] = c;
        return c;
    }

    /// <summary>Sets pages [first, first+count).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Set(ulong first, ulong count)
    {
        while (count > 0)
        {
            var ci = first >> ChunkShift;
            var off = first & (ChunkPages - 1);
            var n = Math.Min(count, ChunkPages - off);
            Bits.Set(Chunk(ci, true).Pointer, off, n);
            first += n;
            count -= n;
        }
    }

    /// <summary>Clears pages [first, first+count); frees chunks left empty when <paramref name="free"/>.</summary>
    public void Clear(ulong first, ulong count, bool free = false)
    {
        while (count > 0)
        {
            var ci = first >> ChunkShift;
            var off = first & (ChunkPages - 1);
            var n = Math.Min(count, ChunkPages - off);
            if (chunks.TryGetValue(ci, out var c))
            {
                if (free && off == 0 && n == ChunkPages) { c.Dispose(); chunks.Remove(ci); }
                else Bits.Clear(c.Pointer, off, n);
            }
            first += n;
            count -= n;
        }
    }

    /// <summary>
    /// ORs the pages of [first, first+count) into <paramref name="bitmap"/> at one bit per 2^<paramref name="ratioShift"/>
    /// pages (a bit is set when any page of its group is), and clears them unless <paramref name="noClear"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Report(ulong first, ulong count, int ratioShift, Span<ulong> bitmap, bool noClear)
    {
        fixed (ulong* outp = bitmap)
        {
            var done = 0UL;
            while (done < count)
            {
                var page = first + done;
                var ci = page >> ChunkShift;
                var off = page & (ChunkPages - 1);
                var n = Math.Min(count - done, ChunkPages - off);
                if (chunks.TryGetValue(ci, out var c))
                {
                    var src = c.Pointer;
                    if (ratioShift == 0 && (off & 63) == 0 && (done & 63) == 0)
                    {
                        // word-aligned: OR whole words, then clear them
                        var words = (long)(n >> 6);
                        var d = outp + (done >> 6);
                        var s = src + (off >> 6);
                        for (long i = 0; i < words; i++) d[i] |= s[i];
                        if (!noClear) Bits.ClearWords(s, words);
                        var rest = n & 63;
                        if (rest > 0)
                        {
                            var mask = (1UL << (int)rest) - 1;
                            d[words] |= s[words] & mask;
                            if (!noClear) s[words] &= ~mask;
                        }
                    }
                    else
                    {
                        // walk the set bits
                        var w0 = off >> 6;
                        var w1 = (off + n - 1) >> 6;
                        for (var w = w0; w <= w1; w++)
                        {
                            var v = src[w];
                            if (v == 0) continue;
                            if (w == w0) v &= ~0UL << (int)(off & 63);
                            if (w == w1) v &= ~0UL >> (int)(63 - ((off + n - 1) & 63));
                            var taken = v;
                            while (v != 0)
                            {
                                var b = (ulong)BitOperations.TrailingZeroCount(v);
                                v &= v - 1;
                                var rel = ((w << 6) + b - off + done) >> ratioShift;
                                outp[rel >> 6] |= 1UL << (int)(rel & 63);
                            }
                            if (!noClear) src[w] &= ~taken;
                        }
                    }
                }
                done += n;
            }
        }
    }

    public long PopCount()
    {
        long n = 0;
        foreach (var c in chunks.Values) n += Bits.PopCount(c.Pointer, c.Count);
        return n;
    }

    public void Dispose()
    {
        foreach (var c in chunks.Values) c.Dispose();
        chunks.Clear();
    }
}
