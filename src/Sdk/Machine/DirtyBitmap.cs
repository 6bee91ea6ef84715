using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace VirtLab.Sdk.Machine;

/// <summary>A page run: <see cref="Count"/> consecutive pages starting at <see cref="First"/> (page indexes within a slot).</summary>
public readonly record struct PageRun(long First, long Count)
{
    /// <summary>The first page after the run.</summary>
    public long End => First + Count;
    /// <inheritdoc/>
    public override string ToString() => Count == 1 ? $"[{First}]" : $"[{First}..{End})";
}

/// <summary>
/// One bit per 4 KiB page of a memslot, exactly KVM's <c>dirty_bitmap</c> layout: <c>ulong</c> words, bit i of word w
/// is page <c>w*64 + i</c> (little-endian), <c>ALIGN(npages, 64) / 8</c> bytes. Bits past <see cref="Pages"/> stay zero
/// (KVM never sets them); should they be written through <see cref="Words"/>, counts and scans still ignore them.
/// Count is a hardware popcount; set pages and runs are walked word by word with TZCNT, skipping zero (and, for runs,
/// all-ones) stretches 128 bytes at a time with vector compares.
/// </summary>
public sealed class DirtyBitmap : IEquatable<DirtyBitmap>
{
    readonly ulong[] _words;

    /// <summary>An all-clear bitmap of <paramref name="pages"/> pages.</summary>
    public DirtyBitmap(long pages)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(pages);
        Pages = pages;
        _words = new ulong[WordsFor(pages)];
    }

    /// <summary>Wraps <paramref name="words"/> (not copied). Its length must be <c>ceil(pages / 64)</c> and bits past <paramref name="pages"/> zero.</summary>
    public DirtyBitmap(long pages, ulong[] words)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(pages);
        ArgumentNullException.ThrowIfNull(words);
        if (words.Length != WordsFor(pages))
            throw new ArgumentException($"a bitmap of {pages} pages has {WordsFor(pages)} words; got {words.Length}", nameof(words));
        Pages = pages;
        this._words = words;
        if (TailMask != ulong.MaxValue && (words[^1] & ~TailMask) != 0)
            throw new ArgumentException($"bits past page {pages - 1} are set in the last word", nameof(words));
    }

    /// <summary>Words needed for <paramref name="pages"/> bits (KVM: <c>kvm_dirty_bitmap_bytes / 8</c>).</summary>
    public static int WordsFor(long pages) => checked((int)((pages + 63) >> 6));

    /// <summary>Number of pages (bits) the bitmap covers.</summary>
    public long Pages { get; }

    /// <summary>The words themselves (shared, not a copy) — what KVM_GET_DIRTY_LOG fills.</summary>
    public ulong[] Words => _words;

    /// <summary>The words as a span (bit <c>i % 64</c> of word <c>i / 64</c> is page i, as in KVM's bitmap).</summary>
    public Span<ulong> AsSpan() => _words;

    /// <summary>Bytes of the bitmap (whole 64-bit words).</summary>
    public long SizeInBytes => (long)_words.Length * 8;

    ulong TailMask => (Pages & 63) == 0 ? ulong.MaxValue : (1UL << (int)(Pages & 63)) - 1;

    /// <summary>Whether <paramref name="page"/> is set.</summary>
    public bool this[long page]
    {
        get => Get(page);
        set { if (value) Set(page); else Clear(page); }
    }

    /// <summary>Whether <paramref name="page"/> is set.</summary>
    public bool Get(long page)
    {
        CheckPage(page);
        return (_words[page >> 6] & (1UL << (int)(page & 63))) != 0;
    }

    /// <summary>Sets <paramref name="page"/>.</summary>
    public void Set(long page)
    {
        CheckPage(page);
        _words[page >> 6] |= 1UL << (int)(page & 63);
    }

    /// <summary>Clears <paramref name="page"/>.</summary>
    public void Clear(long page)
    {
        CheckPage(page);
        _words[page >> 6] &= ~(1UL << (int)(page & 63));
    }

    /// <summary>Sets <paramref name="count"/> pages from <paramref name="first"/>.</summary>
    public void SetRange(long first, long count) => ApplyRange(first, count, set: true);

    /// <summary>Clears <paramref name="count"/> pages from <paramref name="first"/>.</summary>
    public void ClearRange(long first, long count) => ApplyRange(first, count, set: false);

    /// <summary>Sets every page.</summary>
    public void SetAll()
    {
        if (_words.Length == 0) return;
        Array.Fill(_words, ulong.MaxValue);
        _words[^1] = TailMask;
    }

    /// <summary>Clears every page.</summary>
    public void ClearAll() => Array.Clear(_words);

    /// <summary>Set pages (hardware popcount, 4 words per iteration).</summary>
    public long Count => _words.Length == 0 ? 0 : PopCount(_words.AsSpan(0, _words.Length - 1)) + BitOperations.PopCount(_words[^1] & TailMask);

    /// <summary>Set pages in [first, first+count).</summary>
    public long CountRange(long first, long count)
    {
        CheckRange(first, count);
        if (count == 0) return 0;
        long end = first + count;
        int w0 = (int)(first >> 6), w1 = (int)((end - 1) >> 6);
        ulong m0 = ulong.MaxValue << (int)(first & 63);
        ulong m1 = ulong.MaxValue >> (int)(63 - ((end - 1) & 63));
        if (w0 == w1) return BitOperations.PopCount(_words[w0] & m0 & m1);
        long n = BitOperations.PopCount(_words[w0] & m0) + BitOperations.PopCount(_words[w1] & m1);
        return n + PopCount(_words.AsSpan(w0 + 1, w1 - w0 - 1));
    }

    /// <summary>No page is set.</summary>
    public bool IsEmpty => NextNonZeroWord(0) is var i && (i < 0 || (i == _words.Length - 1 && WordForScan(i) == 0));

    /// <summary>Some page is set.</summary>
    public bool Any => !IsEmpty;

    /// <summary>First set page ≥ <paramref name="from"/>, or -1.</summary>
    public long NextSetPage(long from)
    {
        if (from < 0) from = 0;
        if (from >= Pages) return -1;
        int w = (int)(from >> 6);
        ulong cur = _words[w] & (ulong.MaxValue << (int)(from & 63));
        long r;
        if (cur != 0) r = ((long)w << 6) + BitOperations.TrailingZeroCount(cur);
        else
        {
            w = IndexOfWordNot(_words, w + 1, 0);
            r = w < 0 ? -1 : ((long)w << 6) + BitOperations.TrailingZeroCount(_words[w]);
        }
        return r < Pages ? r : -1;
    }

    /// <summary>First clear page ≥ <paramref name="from"/>, or <see cref="Pages"/> when all remaining pages are set.</summary>
    public long NextClearPage(long from)
    {
        if (from < 0) from = 0;
        if (from >= Pages) return Pages;
        int w = (int)(from >> 6);
        ulong cur = ~_words[w] & (ulong.MaxValue << (int)(from & 63));
        long r;
        if (cur != 0) r = ((long)w << 6) + BitOperations.TrailingZeroCount(cur);
        else
        {
            w = IndexOfWordNot(_words, w + 1, ulong.MaxValue);
            r = w < 0 ? Pages : ((long)w << 6) + BitOperations.TrailingZeroCount(~_words[w]);
        }
        return Math.Min(r, Pages);
    }

    /// <summary>Set pages in increasing order (allocation-free <c>foreach</c>).</summary>
    public SetPageEnumerable SetPages => new(this);

    /// <summary>Maximal runs of consecutive set pages in increasing order (allocation-free <c>foreach</c>).</summary>
    public RunEnumerable Runs => new(this);

    /// <summary>The set pages in ascending order.</summary>
    public long[] ToArray()
    {
        var result = new long[Count];
        CopySetPages(result);
        return result;
    }

    /// <summary>Writes the set pages, in increasing order, to <paramref name="destination"/> (which must hold
    /// <see cref="Count"/> of them); returns how many were written.</summary>
    public int CopySetPages(Span<long> destination)
    {
        int n = 0;
        ref long d = ref MemoryMarshal.GetReference(destination);
        for (int i = NextNonZeroWord(0); i >= 0; i = NextNonZeroWord(i + 1))
        {
            ulong bits = WordForScan(i);
            if (BitOperations.PopCount(bits) > destination.Length - n)
                throw new ArgumentException($"the destination holds {destination.Length} pages but this bitmap has more set", nameof(destination));
            long @base = (long)i << 6;
            for (; bits != 0; bits &= bits - 1) Unsafe.Add(ref d, n++) = @base + BitOperations.TrailingZeroCount(bits);
        }
        return n;
    }

    /// <summary>Calls <paramref name="action"/> for every set page, in increasing order (one delegate call per page;
    /// a <c>foreach</c> over <see cref="SetPages"/> avoids even that).</summary>
    public void ForEachSetPage(Action<long> action)
    {
        ArgumentNullException.ThrowIfNull(action);
        for (int i = NextNonZeroWord(0); i >= 0; i = NextNonZeroWord(i + 1))
        {
            long @base = (long)i << 6;
            for (ulong bits = WordForScan(i); bits != 0; bits &= bits - 1) action(@base + BitOperations.TrailingZeroCount(bits));
        }
    }

    /// <summary>Index of the first non-zero word ≥ <paramref name="from"/>, or -1: the next word is checked directly
    /// (dense bitmaps), a zero stretch goes to the vectorised scan.</summary>
    int NextNonZeroWord(int from) => NextNonZeroWord(_words, from);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int NextNonZeroWord(ulong[] words, int from)
    {
        if ((uint)from >= (uint)words.Length) return -1;
        return Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(words), from) != 0 ? from : IndexOfWordNot(words, from + 1, 0);
    }

    /// <summary>Word <paramref name="i"/> with bits past <see cref="Pages"/> masked off (they are zero unless <see cref="Words"/> was written there).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    ulong WordForScan(int i) => i == _words.Length - 1 ? _words[i] & TailMask : _words[i];

    /// <summary>Sets the pages set in <paramref name="other"/> (same size); returns this bitmap.</summary>
    public DirtyBitmap Or(DirtyBitmap other) { Combine(other, Op.Or); return this; }
    /// <summary>Keeps only the pages also set in <paramref name="other"/> (same size); returns this bitmap.</summary>
    public DirtyBitmap And(DirtyBitmap other) { Combine(other, Op.And); return this; }
    /// <summary>Clears the pages set in <paramref name="other"/> (same size); returns this bitmap.</summary>
    public DirtyBitmap AndNot(DirtyBitmap other) { Combine(other, Op.AndNot); return this; }
    /// <summary>Flips the pages set in <paramref name="other"/> (same size); returns this bitmap.</summary>
    public DirtyBitmap Xor(DirtyBitmap other) { Combine(other, Op.Xor); return this; }

    /// <summary>Copies <paramref name="other"/>'s bits (same size) into this bitmap.</summary>
    public void CopyFrom(DirtyBitmap other)
    {
        CheckSameSize(other);
        other._words.AsSpan().CopyTo(_words);
    }

    /// <summary>A copy with its own words.</summary>
    public DirtyBitmap Clone() => new(Pages, (ulong[])_words.Clone());

    /// <summary>A bitmap of <paramref name="pages"/> pages with <paramref name="setPages"/> set.</summary>
    public static DirtyBitmap FromPages(long pages, IEnumerable<long> setPages)
    {
        var b = new DirtyBitmap(pages);
        foreach (var p in setPages) b.Set(p);
        return b;
    }

    /// <inheritdoc/>
    public bool Equals(DirtyBitmap? other)
        => other is not null && other.Pages == Pages && other._words.AsSpan().SequenceEqual(_words);

    /// <inheritdoc/>
    public override bool Equals(object? obj) => Equals(obj as DirtyBitmap);

    /// <inheritdoc/>
    public override int GetHashCode()
    {
        var h = new HashCode();
        h.Add(Pages);
        h.AddBytes(MemoryMarshal.AsBytes(_words.AsSpan()));
        return h.ToHashCode();
    }

    /// <inheritdoc/>
    public override string ToString()
    {
        var n = Count;
        return $"{n} of {Pages} pages dirty ({new Measure.Size(n * 4096)})";
    }

    // ---- enumerators ----------------------------------------------------------------------------

    /// <summary>The set pages, enumerated without allocating (<c>foreach (var p in bitmap.SetPages)</c>).</summary>
    public readonly struct SetPageEnumerable(DirtyBitmap bitmap) : IEnumerable<long>
    {
        /// <inheritdoc/>
        public SetPageEnumerator GetEnumerator() => new(bitmap);
        IEnumerator<long> IEnumerable<long>.GetEnumerator() => GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    /// <summary>Walks set pages word by word: TZCNT + clear-lowest-bit per set page, a zero word costs one compare,
    /// and long zero stretches are skipped 128 bytes at a time.</summary>
    public struct SetPageEnumerator : IEnumerator<long>
    {
        readonly ulong[] _words;
        readonly ulong _tailMask;
        int _index;     // word being consumed
        ulong _pending; // its bits not yet returned
        long _current;

        internal SetPageEnumerator(DirtyBitmap b)
        {
            _words = b._words;
            _tailMask = b.TailMask;
            _index = -1;
            _pending = 0;
            _current = -1;
        }

        /// <inheritdoc/>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool MoveNext()
        {
            if (_pending == 0 && !NextWord()) return false;
            _current = ((long)_index << 6) + BitOperations.TrailingZeroCount(_pending);
            _pending &= _pending - 1;
            return true;
        }

        /// <summary>Loads the next non-zero word into <see cref="_pending"/>; false at the end.</summary>
        bool NextWord()
        {
            var w = _words;
            int i = NextNonZeroWord(w, _index + 1);
            if (i < 0) { _index = w.Length; return false; }
            ulong bits = w[i];
            if (i == w.Length - 1) bits &= _tailMask; // never report pages past Pages, even if Words was written there
            _index = i;
            _pending = bits;
            return bits != 0 || NextWord();
        }

        /// <inheritdoc/>
        public readonly long Current => _current;
        readonly object System.Collections.IEnumerator.Current => _current;
        /// <inheritdoc/>
        public void Reset() { _index = -1; _pending = 0; _current = -1; }
        /// <inheritdoc/>
        public readonly void Dispose() { }
    }

    /// <summary>The runs of consecutive set pages, enumerated without allocating.</summary>
    public readonly struct RunEnumerable(DirtyBitmap bitmap) : IEnumerable<PageRun>
    {
        /// <inheritdoc/>
        public RunEnumerator GetEnumerator() => new(bitmap);
        IEnumerator<PageRun> IEnumerable<PageRun>.GetEnumerator() => GetEnumerator();
        System.Collections.IEnumerator System.Collections.IEnumerable.GetEnumerator() => GetEnumerator();
    }

    /// <summary>Walks maximal runs word by word: the start is the TZCNT of the remaining bits, the end the TZCNT of
    /// their complement; zero and all-ones stretches are skipped by vectorised compares.</summary>
    public struct RunEnumerator : IEnumerator<PageRun>
    {
        readonly ulong[] _words;
        readonly long _pages;
        int _index;     // word being consumed
        ulong _pending; // its bits not yet covered by a returned run
        PageRun _current;

        internal RunEnumerator(DirtyBitmap b)
        {
            _words = b._words;
            _pages = b.Pages;
            _index = -1;
            _pending = 0;
            _current = default;
        }

        /// <inheritdoc/>
        public bool MoveNext()
        {
            var w = _words;
            ref ulong r = ref MemoryMarshal.GetArrayDataReference(w);
            if (_pending == 0)
            {
                int i = NextNonZeroWord(w, _index + 1);
                if (i < 0) { _index = w.Length; return false; }
                _index = i;
                _pending = Unsafe.Add(ref r, i);
            }
            int s = BitOperations.TrailingZeroCount(_pending);
            long first = ((long)_index << 6) + s;
            if (first >= _pages) { _index = w.Length; _pending = 0; return false; } // bits past Pages (written through Words)
            // Bits below s are already clear in pending, so ~pending has them set: mask them off.
            ulong zeros = ~_pending & (ulong.MaxValue << s);
            long end;
            if (zeros != 0)
            {
                int e = BitOperations.TrailingZeroCount(zeros);
                end = ((long)_index << 6) + e;
                _pending &= ulong.MaxValue << e; // e < 64 here
            }
            else
            {
                // The run reaches the end of this word: skip all-ones words, then end at the first clear bit.
                int i = _index + 1;
                if (i < w.Length && Unsafe.Add(ref r, i) == ulong.MaxValue) i = IndexOfWordNot(w, i + 1, ulong.MaxValue);
                if ((uint)i >= (uint)w.Length)
                {
                    end = (long)w.Length << 6;
                    _index = w.Length;
                    _pending = 0;
                }
                else
                {
                    ulong x = Unsafe.Add(ref r, i);
                    int e = BitOperations.TrailingZeroCount(~x); // x is not all ones
                    end = ((long)i << 6) + e;
                    _index = i;
                    _pending = x & (ulong.MaxValue << e);
                }
            }
            _current = new PageRun(first, Math.Min(end, _pages) - first);
            return true;
        }

        /// <inheritdoc/>
        public readonly PageRun Current => _current;
        readonly object System.Collections.IEnumerator.Current => _current;
        /// <inheritdoc/>
        public void Reset() { _index = -1; _pending = 0; _current = default; }
        /// <inheritdoc/>
        public readonly void Dispose() { }
    }

    // ---- kernels --------------------------------------------------------------------------------

    /// <summary>Index of the first word ≥ <paramref name="from"/> that differs from <paramref name="value"/>, or -1.
    /// 16 words (128 bytes) per step with 256-bit vectors, then 4, then scalar. AggressiveOptimization: crossgen2 leaves a
    /// method that asks Vector256.IsHardwareAccelerated out of the ReadyToRun image, so it would start at Tier 0 and reach
    /// tier 1 only after the background tiering delay — inside a recipe's first scan; this way the warm-up's first call
    /// compiles it fully optimized.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal static int IndexOfWordNot(ulong[] words, int from, ulong value)
    {
        int n = words.Length, i = from;
        if (i >= n) return -1;
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(words);
        if (Vector256.IsHardwareAccelerated)
        {
            var v = Vector256.Create(value);
            for (; i + 16 <= n; i += 16)
            {
                var x = (Vector256.LoadUnsafe(ref r, (nuint)i) ^ v) | (Vector256.LoadUnsafe(ref r, (nuint)(i + 4)) ^ v)
                      | (Vector256.LoadUnsafe(ref r, (nuint)(i + 8)) ^ v) | (Vector256.LoadUnsafe(ref r, (nuint)(i + 12)) ^ v);
                if (x != Vector256<ulong>.Zero) break;
            }
            for (; i + 4 <= n; i += 4)
            {
                // one bit per lane that equals value; the first clear bit is the word we want
                var same = Vector256.Equals(Vector256.LoadUnsafe(ref r, (nuint)i), v).ExtractMostSignificantBits();
                if (same != 0b1111) return i + BitOperations.TrailingZeroCount(~same);
            }
        }
        for (; i < n; i++)
            if (Unsafe.Add(ref r, i) != value) return i;
        return -1;
    }

    internal static long PopCount(ReadOnlySpan<ulong> span)
    {
        long a = 0, b = 0, c = 0, d = 0;
        int i = 0, n = span.Length;
        ref ulong r = ref MemoryMarshal.GetReference(span);
        for (; i + 4 <= n; i += 4)
        {
            a += BitOperations.PopCount(Unsafe.Add(ref r, i));
            b += BitOperations.PopCount(Unsafe.Add(ref r, i + 1));
            c += BitOperations.PopCount(Unsafe.Add(ref r, i + 2));
            d += BitOperations.PopCount(Unsafe.Add(ref r, i + 3));
        }
        for (; i < n; i++) a += BitOperations.PopCount(Unsafe.Add(ref r, i));
        return a + b + c + d;
    }

    enum Op { Or, And, AndNot, Xor }

    void Combine(DirtyBitmap other, Op op)
    {
        CheckSameSize(other);
        int n = _words.Length, i = 0;
        ref ulong d = ref MemoryMarshal.GetArrayDataReference(_words);
        ref ulong s = ref MemoryMarshal.GetArrayDataReference(other._words);
        if (Vector256.IsHardwareAccelerated)
        {
            for (; i + 4 <= n; i += 4)
            {
                var x = Vector256.LoadUnsafe(ref d, (nuint)i);
                var y = Vector256.LoadUnsafe(ref s, (nuint)i);
                var z = op switch { Op.Or => x | y, Op.And => x & y, Op.AndNot => Vector256.AndNot(x, y), _ => x ^ y };
                z.StoreUnsafe(ref d, (nuint)i);
            }
        }
        for (; i < n; i++)
        {
            ref ulong x = ref Unsafe.Add(ref d, i);
            ulong y = Unsafe.Add(ref s, i);
            x = op switch { Op.Or => x | y, Op.And => x & y, Op.AndNot => x & ~y, _ => x ^ y };
        }
    }

    void ApplyRange(long first, long count, bool set)
    {
        CheckRange(first, count);
        if (count == 0) return;
        long end = first + count;
        int w0 = (int)(first >> 6), w1 = (int)((end - 1) >> 6);
        ulong m0 = ulong.MaxValue << (int)(first & 63);
        ulong m1 = ulong.MaxValue >> (int)(63 - ((end - 1) & 63));
        if (w0 == w1) { Apply(ref _words[w0], m0 & m1, set); return; }
        Apply(ref _words[w0], m0, set);
        _words.AsSpan(w0 + 1, w1 - w0 - 1).Fill(set ? ulong.MaxValue : 0);
        Apply(ref _words[w1], m1, set);

        static void Apply(ref ulong w, ulong m, bool set) => w = set ? w | m : w & ~m;
    }

    void CheckPage(long page)
    {
        if ((ulong)page >= (ulong)Pages)
            throw new ArgumentOutOfRangeException(nameof(page), $"page {page} is outside this bitmap of {Pages} pages (0 … {Pages - 1})");
    }

    void CheckRange(long first, long count)
    {
        if (first < 0 || count < 0 || first > Pages || count > Pages - first)
            throw new ArgumentOutOfRangeException(nameof(count), $"page range [{first}, {first + count}) is outside this bitmap of {Pages} pages");
    }

    void CheckSameSize(DirtyBitmap other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (other.Pages != Pages)
            throw new ArgumentException($"bitmaps differ in size: {Pages} pages and {other.Pages} pages", nameof(other));
    }
}
