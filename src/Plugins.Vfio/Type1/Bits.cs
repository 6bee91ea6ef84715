using System.Runtime.CompilerServices;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace VirtLab.Plugins.Vfio.Type1;

/// <summary>
/// A zeroed array of 64-bit words in native memory (calloc: large buffers are fresh mmap'd pages, committed only when
/// written, as a kvzalloc'd bitmap would be if the kernel were lazy). Used for the per-vfio_dma dirty bitmaps, whose
/// size follows the mapping (32 MiB per TiB) and must not sit on the managed heap.
/// </summary>
internal sealed unsafe class WordBuffer : IDisposable
{
    ulong* words;

    public WordBuffer(long count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        Count = count;
        words = (ulong*)NativeMemory.AllocZeroed((nuint)Math.Max(1, count), sizeof(ulong));
        if (count * 8 > 64 * 1024) GC.AddMemoryPressure(count * 8);
    }

    public long Count { get; }

    public long Bytes => Count * 8;

    public ulong* Pointer => words != null ? words : throw new ObjectDisposedException(nameof(WordBuffer));

    public ref ulong this[long i] => ref Pointer[i];

    public void Dispose()
    {
        if (words == null) return;
        NativeMemory.Free(words);
        words = null;
        if (Count * 8 > 64 * 1024) GC.RemoveMemoryPressure(Count * 8);
        GC.SuppressFinalize(this);
    }

    ~WordBuffer() => Dispose();
}

/// <summary>Linux bitmap operations on little-endian u64 words (bit i of word w is bit w*64+i), as lib/bitmap.c does them.</summary>
internal static unsafe class Bits
{
    /// <summary>__ffs: index of the lowest set bit; 64 for 0 (x86 TZCNT), so a following <c>x &gt;&gt; __ffs(0)</c> shifts by 0 as on x86.</summary>
    public static int Ffs(ulong x) => BitOperations.TrailingZeroCount(x);

    /// <summary>bitmap_set(map, start, count).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Set(ulong* map, ulong start, ulong count)
    {
        if (count == 0) return;
        var end = start + count;
        ulong w = start >> 6, last = (end - 1) >> 6;
        ulong head = ~0UL << (int)(start & 63), tail = ~0UL >> (int)(63 - ((end - 1) & 63));
        if (w == last) { map[w] |= head & tail; return; }
        map[w] |= head;
        var n = last - w - 1;
        if (n > 0) new Span<ulong>(map + w + 1, checked((int)n)).Fill(ulong.MaxValue);
        map[last] |= tail;
    }

    /// <summary>bitmap_clear(map, start, count); full words are only written when not already zero, so a clear over
    /// never-written (lazily committed) memory does not commit it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Clear(ulong* map, ulong start, ulong count)
    {
        if (count == 0) return;
        var end = start + count;
        ulong w = start >> 6, last = (end - 1) >> 6;
        ulong head = ~0UL << (int)(start & 63), tail = ~0UL >> (int)(63 - ((end - 1) & 63));
        if (w == last) { map[w] &= ~(head & tail); return; }
        map[w] &= ~head;
        ClearWords(map + w + 1, (long)(last - w - 1));
        map[last] &= ~tail;
    }

    /// <summary>Zeroes <paramref name="n"/> words, writing only the nonzero 32-byte blocks.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ClearWords(ulong* p, long n)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
            for (; i + 4 <= n; i += 4)
                if (Vector256.Load(p + i) != Vector256<ulong>.Zero) Vector256<ulong>.Zero.Store(p + i);
        for (; i < n; i++) if (p[i] != 0) p[i] = 0;
    }

    public static bool Test(ulong* map, ulong bit) => (map[bit >> 6] & (1UL << (int)(bit & 63))) != 0;

    /// <summary>Population count of <paramref name="n"/> words.</summary>
    public static long PopCount(ulong* p, long n)
    {
        long c = 0;
        for (long i = 0; i < n; i++) c += BitOperations.PopCount(p[i]);
        return c;
    }

    /// <summary>
    /// Copies <paramref name="n"/> words from <paramref name="src"/> to <paramref name="dst"/> and zeroes the source
    /// words in the same pass (the report-and-clear of an aligned per-dma bitmap, fused so the 32 MiB of a 1 TiB
    /// mapping are walked once). Only nonzero source blocks are written back.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void CopyAndClear(ulong* src, ulong* dst, long n)
    {
        long i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 8 <= n; i += 8)
            {
                var a = Vector256.Load(src + i);
                var b = Vector256.Load(src + i + 4);
                a.Store(dst + i);
                b.Store(dst + i + 4);
                Vector256<ulong>.Zero.Store(src + i);
                Vector256<ulong>.Zero.Store(src + i + 4);
            }
        }
        for (; i < n; i++)
        {
            var v = src[i];
            dst[i] = v;
            if (v != 0) src[i] = 0;
        }
    }

    /// <summary>OR-merges <paramref name="n"/> bits of <paramref name="src"/> (from bit 0) into <paramref name="dst"/> at bit <paramref name="at"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void OrInto(ulong* dst, ulong at, ulong* src, ulong n)
    {
        if (n == 0) return;
        var shift = (int)(at & 63);
        var d = dst + (at >> 6);
        var words = (long)((n + 63) >> 6);
        if (shift == 0)
        {
            for (long i = 0; i < words - 1; i++) d[i] |= src[i];
        }
        else
        {
            ulong carry = 0;
            for (long i = 0; i < words - 1; i++)
            {
                var v = src[i];
                d[i] |= (v << shift) | carry;
                carry = v >> (64 - shift);
            }
            // the last (partial) source word and the carry into the next destination word
            var lastBits = (int)(n - (ulong)(words - 1) * 64);
            var lastV = src[words - 1] & (lastBits == 64 ? ~0UL : (1UL << lastBits) - 1);
            d[words - 1] |= (lastV << shift) | carry;
            if (lastBits + shift > 64) d[words] |= lastV >> (64 - shift);
            return;
        }
        {
            var lastBits = (int)(n - (ulong)(words - 1) * 64);
            d[words - 1] |= src[words - 1] & (lastBits == 64 ? ~0UL : (1UL << lastBits) - 1);
        }
    }
}
