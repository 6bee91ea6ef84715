using System.Runtime.CompilerServices;
namespace VirtLab.Plugins.Vfio.Tracking;

/// <summary>
/// A set of disjoint, non-adjacent half-open ranges [S, E) kept sorted in fixed-size leaves (a flat B+-tree: 256 ranges
/// per leaf, 16 bytes a range): the reviewer's "rb tree of dirty ranges" without an object per range. Adding merges
/// with overlapping and touching neighbours; removing trims and splits.
/// </summary>
internal sealed class RangeSet
{
    const int LeafCap = 256;

    sealed class Leaf
    {
        public readonly ulong[] S = new ulong[LeafCap];
        public readonly ulong[] E = new ulong[LeafCap];
        public int N;
    }

    readonly List<Leaf> leaves = [];

    /// <summary>Number of ranges.</summary>
    public long Count { get; private set; }

    /// <summary>Bytes the leaves take (both arrays, whole capacity).</summary>
    public long Bytes => (long)leaves.Count * LeafCap * 16;

    public void Clear()
    {
        leaves.Clear();
        Count = 0;
    }

    /// <summary>First range with E ≥ x (<paramref name="touching"/>) or E &gt; x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    (int Leaf, int Index) LowerBoundEnd(ulong x, bool touching)
    {
        int lo = 0, hi = leaves.Count;
        while (lo < hi)
        {
            var mid = (lo + hi) >>> 1;
            var l = leaves[mid];
            var last = l.E[l.N - 1];
            if (touching ? last >= x : last > x) hi = mid; else lo = mid + 1;
        }
        if (lo == leaves.Count) return (lo, 0);
        var leaf = leaves[lo];
        int a = 0, b = leaf.N;
        while (a < b)
        {
            var m = (a + b) >>> 1;
            if (touching ? leaf.E[m] >= x : leaf.E[m] > x) b = m; else a = m + 1;
        }
        return (lo, a);
    }

    /// <summary>Removes entry i of leaf li; returns true when the leaf went away (the next leaf now sits at li).</summary>
    bool RemoveAt(int li, int i)
    {
        var leaf = leaves[li];
        var move = leaf.N - i - 1;
        if (move > 0)
        {
            Array.Copy(leaf.S, i + 1, leaf.S, i, move);
            Array.Copy(leaf.E, i + 1, leaf.E, i, move);
        }
        leaf.N--;
        Count--;
        if (leaf.N > 0) return false;
        leaves.RemoveAt(li);
        return true;
    }

    void InsertAt(int li, int i, ulong s, ulong e)
    {
        Count++;
        if (leaves.Count == 0)
        {
            var first = new Leaf { N = 1 };
            first.S[0] = s;
            first.E[0] = e;
            leaves.Add(first);
            return;
        }
        if (li == leaves.Count) { li--; i = leaves[li].N; }
        var leaf = leaves[li];
        if (leaf.N == LeafCap)
        {
            var right = new Leaf { N = LeafCap / 2 };
            Array.Copy(leaf.S, LeafCap / 2, right.S, 0, LeafCap / 2);
            Array.Copy(leaf.E, LeafCap / 2, right.E, 0, LeafCap / 2);
            leaf.N = LeafCap / 2;
            leaves.Insert(li + 1, right);
            if (i > LeafCap / 2) { leaf = right; i -= LeafCap / 2; }
        }
        var move = leaf.N - i;
        if (move > 0)
        {
            Array.Copy(leaf.S, i, leaf.S, i + 1, move);
            Array.Copy(leaf.E, i, leaf.E, i + 1, move);
        }
        leaf.S[i] = s;
        leaf.E[i] = e;
        leaf.N++;
    }

    /// <summary>Adds [s, e), merging with every range it overlaps or touches.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Add(ulong s, ulong e)
    {
        if (e <= s) return;
        var (li, i) = LowerBoundEnd(s, touching: true);
        // fast path: already inside one range
        if (li < leaves.Count && leaves[li].S[i] <= s && leaves[li].E[i] >= e) return;
        ulong ns = s, ne = e;
        while (li < leaves.Count)
        {
            var leaf = leaves[li];
            if (i >= leaf.N) { li++; i = 0; continue; }
            if (leaf.S[i] > e) break;
            ns = Math.Min(ns, leaf.S[i]);
            ne = Math.Max(ne, leaf.E[i]);
            if (RemoveAt(li, i)) i = 0;
        }
        InsertAt(li, i, ns, ne);
    }

    /// <summary>Removes [s, e) from the set (trimming and splitting ranges); whole ranges inside go in one move per leaf.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Remove(ulong s, ulong e)
    {
        if (e <= s) return;
        var (li, i) = LowerBoundEnd(s, touching: false);
        while (li < leaves.Count)
        {
            var leaf = leaves[li];
            if (i >= leaf.N) { li++; i = 0; continue; }
            ulong rs = leaf.S[i], re = leaf.E[i];
            if (rs >= e) break;
            if (rs < s && re > e)
            {
                leaf.E[i] = s;
                InsertAt(li, i + 1, e, re);
                return;
            }
            if (rs < s) { leaf.E[i] = s; i++; continue; }
            if (re > e) { leaf.S[i] = e; return; }
            // ranges i .. j-1 lie wholly inside [s, e)
            var j = i + 1;
            while (j < leaf.N && leaf.E[j] <= e) j++;
            var move = leaf.N - j;
            if (move > 0)
            {
                Array.Copy(leaf.S, j, leaf.S, i, move);
                Array.Copy(leaf.E, j, leaf.E, i, move);
            }
            leaf.N -= j - i;
            Count -= j - i;
            if (leaf.N == 0) { leaves.RemoveAt(li); i = 0; }
        }
    }

    /// <summary>Calls <paramref name="visit"/> with the part of every range inside [s, e).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void Visit<TState>(ulong s, ulong e, ref TState state, VisitAction<TState> visit)
    {
        var (li, i) = LowerBoundEnd(s, touching: false);
        while (li < leaves.Count)
        {
            var leaf = leaves[li];
            if (i >= leaf.N) { li++; i = 0; continue; }
            if (leaf.S[i] >= e) return;
            visit(ref state, Math.Max(leaf.S[i], s), Math.Min(leaf.E[i], e));
            i++;
        }
    }

    public delegate void VisitAction<TState>(ref TState state, ulong s, ulong e);

    /// <summary>All ranges, in order (for tests and display).</summary>
    public IEnumerable<(ulong S, ulong E)> All()
    {
        foreach (var l in leaves)
            for (var i = 0; i < l.N; i++) yield return (l.S[i], l.E[i]);
    }
}
