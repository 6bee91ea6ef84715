using System.Runtime.CompilerServices;
using System.Numerics;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// One IOVA mapping: [<see cref="Iova"/>, <see cref="Last"/>] → [<see cref="Target"/>, …) in the parent space, with
/// <see cref="Perm"/> (a vhost IOTLB entry, a VFIO type1 <c>vfio_dma</c>).
/// </summary>
public readonly record struct IovaMapping(ulong Iova, ulong Size, ulong Target, MemoryAccess Perm)
{
    /// <summary>The last IOVA of the mapping (inclusive, as vhost's <c>last</c>; the mapping may end at 2^64 − 1).</summary>
    public ulong Last => Iova + (Size - 1);

    /// <summary>Whether <paramref name="iova"/> lies in the mapping.</summary>
    public bool Contains(ulong iova) => iova - Iova < Size;

    /// <summary>Whether [iova, iova + size) shares a byte with this mapping.</summary>
    public bool Overlaps(ulong iova, ulong size)
    {
        if (size == 0) return false;
        var end = iova + (size - 1);
        if (end < iova) end = ulong.MaxValue; // clamp a range that wraps
        return iova <= Last && Iova <= end;
    }

    /// <inheritdoc/>
    public override string ToString() => $"[0x{Iova:x}, 0x{Last:x}] → 0x{Target:x} {PermName(Perm)}";

    internal static string PermName(MemoryAccess p) => p switch
    {
        MemoryAccess.Read => "RO", MemoryAccess.Write => "WO", MemoryAccess.ReadWrite => "RW", _ => "none",
    };
}

/// <summary>
/// An IOVA address space layered on a parent space (normally <see cref="Vm.PhysicalSpace"/>): a set of non-overlapping
/// mappings IOVA range → parent range with a permission, changed at run time. The vhost IOTLB and the VFIO type1
/// container are such spaces; their models add their own rules (page granularity, EEXIST, the IOVA range) on top.
/// <para>
/// Concurrency: changes are serialised by a lock and published as an immutable sorted snapshot; translation reads the
/// snapshot once (no lock), so a lookup never sees a torn table, and once a change returns no new translation uses a
/// removed mapping. The snapshot is persistent (chunks shared between versions), so a change costs
/// O(n / 64 + 64), not a copy of the whole table. Lookups first try the last hit (a position validated against the
/// current snapshot), then a branch-free binary search of the chunks' first starts and a vector count of the chunk's starts. <see cref="BeginBatch"/> defers publication (vhost's
/// IOTLB_BATCH_BEGIN … END).
/// </para>
/// </summary>
public sealed class IovaSpace : AddressSpace
{
    /// <summary>
    /// An immutable sorted table cut into chunks (a two-level persistent B-tree): a change copies the chunk it touches
    /// and the chunk index, and shares every other chunk with the previous snapshot. A lookup binary-searches the
    /// chunks' first starts (small enough to stay in cache), then counts the starts ≤ the address in the chunk's key array.
    /// </summary>
    sealed class Snapshot
    {
        public const int ChunkMax = 64, BulkChunk = 48;
        public readonly IovaMapping[][] Chunks; // each sorted, non-empty, at most ChunkMax
        public readonly ulong[] Firsts;
        public readonly ulong[][] Keys; // each chunk's starts alone (8 B each, not 32): the in-chunk search touches a quarter of the lines
        public readonly int Count;
        IovaMapping[]? _flat;

        /// <summary>A snapshot of <paramref name="chunks"/>; the key arrays of chunks shared with <paramref name="donor"/> are shared too.</summary>
        public Snapshot(IovaMapping[][] chunks, Snapshot? donor = null)
        {
            Chunks = chunks;
            Firsts = new ulong[chunks.Length];
            Keys = new ulong[chunks.Length][];
            int j = 0;
            for (int c = 0; c < chunks.Length; c++)
            {
                var first = chunks[c][0].Iova;
                Firsts[c] = first;
                Count += chunks[c].Length;
                // Both tables are sorted and chunks never overlap: a shared chunk has the same first start in the donor.
                if (donor is not null)
                {
                    while (j < donor.Firsts.Length && donor.Firsts[j] < first) j++;
                    if (j < donor.Firsts.Length && ReferenceEquals(donor.Chunks[j], chunks[c]))
                    {
                        Keys[c] = donor.Keys[j];
                        continue;
                    }
                }
                var keys = new ulong[chunks[c].Length];
                for (int k = 0; k < keys.Length; k++) keys[k] = chunks[c][k].Iova;
                Keys[c] = keys;
            }
        }

        /// <summary>All mappings in order (built once per snapshot, on first use; a race builds the same array twice).</summary>
        public IovaMapping[] Flat
        {
            get
            {
                if (Volatile.Read(ref _flat) is { } f) return f;
                var all = new IovaMapping[Count];
                int n = 0;
                foreach (var c in Chunks)
                {
                    c.CopyTo(all, n);
                    n += c.Length;
                }
                Volatile.Write(ref _flat, all);
                return all;
            }
        }

        /// <summary>The position of the last mapping starting at or below <paramref name="address"/>; false when none does.</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public bool Floor(ulong address, out int chunk, out int index)
        {
            var firsts = Firsts;
            if (firsts.Length == 0 || firsts[0] > address)
            {
                chunk = index = -1;
                return false;
            }
            chunk = LastAtOrBelow(firsts, address);
            index = CountAtOrBelow(Keys[chunk], address) - 1;
            return true;
        }

        /// <summary>
        /// How many of the sorted <paramref name="a"/> are ≤ <paramref name="x"/>: a chunk's keys are few (≤ 64), so all
        /// are compared, four at a time, with independent loads instead of a binary search's chain of dependent ones.
        /// </summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static int CountAtOrBelow(ulong[] a, ulong x)
        {
            ref ulong r = ref MemoryMarshal.GetArrayDataReference(a);
            int n = a.Length, i = 0, count = 0;
            if (Vector256.IsHardwareAccelerated)
            {
                var vx = Vector256.Create(x);
                for (; i + 4 <= n; i += 4)
                    count += BitOperations.PopCount(Vector256.LessThanOrEqual(Vector256.LoadUnsafe(ref r, (nuint)i), vx).ExtractMostSignificantBits());
            }
            for (; i < n; i++) count += Unsafe.BitCast<bool, byte>(Unsafe.Add(ref r, i) <= x);
            return count;
        }

        /// <summary>The last index whose value is ≤ <paramref name="x"/>, given a[0] ≤ x (branch-free).</summary>
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        static int LastAtOrBelow(ulong[] a, ulong x)
        {
            ref ulong r = ref MemoryMarshal.GetArrayDataReference(a);
            int lo = 0, n = a.Length;
            while (n > 1)
            {
                int half = n >>> 1;
                // Arithmetic, not a branch (the JIT keeps the ternary as a jump): a random lookup's compares are coin flips.
                lo += half & -Unsafe.BitCast<bool, byte>(Unsafe.Add(ref r, lo + half) <= x);
                n -= half;
            }
            return lo;
        }

        /// <summary>Whether a mapping shares a byte with [iova, end]: only the last one starting at or below end can.</summary>
        public bool Overlaps(ulong iova, ulong end) => Floor(end, out var c, out var i) && Chunks[c][i].Last >= iova;

        /// <summary>A snapshot with <paramref name="m"/> added (it overlaps nothing); a chunk that grows past ChunkMax splits.</summary>
        public Snapshot Insert(IovaMapping m)
        {
            if (Chunks.Length == 0) return new Snapshot([[m]]);
            int at;
            if (Floor(m.Iova, out var c, out var i)) at = i + 1;
            else (c, at) = (0, 0);
            var old = Chunks[c];
            var maps = new IovaMapping[old.Length + 1];
            Array.Copy(old, 0, maps, 0, at);
            maps[at] = m;
            Array.Copy(old, at, maps, at + 1, old.Length - at);
            IovaMapping[][] chunks;
            if (maps.Length <= ChunkMax)
            {
                chunks = (IovaMapping[][])Chunks.Clone();
                chunks[c] = maps;
            }
            else
            {
                int half = maps.Length / 2;
                chunks = new IovaMapping[Chunks.Length + 1][];
                Array.Copy(Chunks, 0, chunks, 0, c);
                chunks[c] = maps[..half];
                chunks[c + 1] = maps[half..];
                Array.Copy(Chunks, c + 1, chunks, c + 2, Chunks.Length - c - 1);
            }
            return new Snapshot(chunks, this);
        }

        /// <summary>
        /// A snapshot without the mappings in [iova, end] that <paramref name="drop"/> selects (added to
        /// <paramref name="removed"/>); this snapshot itself when none is.
        /// </summary>
        public Snapshot RemoveWhere(ulong iova, ulong end, Func<IovaMapping, bool> drop, List<IovaMapping> removed)
        {
            int first = Floor(iova, out var c0, out _) ? c0 : 0;
            var kept = new List<IovaMapping[]>(Chunks.Length);
            for (int c = 0; c < first; c++) kept.Add(Chunks[c]);
            bool changed = false;
            int k = first;
            for (; k < Chunks.Length && Firsts[k] <= end; k++)
            {
                var maps = Chunks[k];
                var left = new List<IovaMapping>(maps.Length);
                foreach (var m in maps)
                    if (m.Iova <= end && m.Last >= iova && drop(m)) removed.Add(m);
                    else left.Add(m);
                if (left.Count == maps.Length) kept.Add(Chunks[k]);
                else
                {
                    changed = true;
                    if (left.Count > 0) kept.Add(left.ToArray());
                }
            }
            if (!changed) return this;
            for (; k < Chunks.Length; k++) kept.Add(Chunks[k]);
            return new Snapshot(kept.ToArray(), this);
        }

        /// <summary>A snapshot of <paramref name="sorted"/> (sorted, non-overlapping), in chunks with room to grow.</summary>
        public static Snapshot Of(IovaMapping[] sorted)
        {
            var chunks = new IovaMapping[(sorted.Length + BulkChunk - 1) / BulkChunk][];
            for (int c = 0; c < chunks.Length; c++)
                chunks[c] = sorted[(c * BulkChunk)..Math.Min(sorted.Length, (c + 1) * BulkChunk)];
            return new Snapshot(chunks);
        }
    }

    static readonly Snapshot Empty = new([]);

    readonly object _writeLock = new();
    Snapshot _pending = Empty;  // the writers' table (what the next publication shows); under writeLock
    Snapshot _snapshot = Empty; // the published table translations read
    int _hint; // chunk << 8 | index of the last hit in the current snapshot (validated before use; races only cost a miss)
    long _generation;
    int _batchDepth;
    bool _batchDirty;

    /// <summary>An empty IOVA space over <paramref name="parent"/>, accepting mappings inside [<paramref name="first"/>, <paramref name="last"/>].</summary>
    public IovaSpace(AddressSpace parent, string name, ulong first = 0, ulong last = ulong.MaxValue) : base(parent?.Vm!, name)
    {
        ArgumentNullException.ThrowIfNull(parent);
        if (last < first) throw new ArgumentException($"the IOVA range [0x{first:x}, 0x{last:x}] is empty: last must be ≥ first", nameof(last));
        Parent = parent;
        First = first;
        this.Last = last;
    }

    /// <summary>The space mapping targets are addresses in.</summary>
    public AddressSpace Parent { get; }

    /// <summary>The lowest IOVA a mapping may use (vhost-vdpa's <c>GET_IOVA_RANGE</c> first).</summary>
    public ulong First { get; }

    /// <summary>The highest IOVA a mapping may use (inclusive).</summary>
    public ulong Last { get; }

    /// <inheritdoc/>
    public override long Generation => Volatile.Read(ref _generation) + Parent.Generation;

    /// <summary>The published mappings, sorted by IOVA.</summary>
    public IReadOnlyList<IovaMapping> Mappings => Volatile.Read(ref _snapshot).Flat;

    /// <summary>Number of mappings.</summary>
    public int Count => Volatile.Read(ref _snapshot).Count;

    // ---- changes ------------------------------------------------------------------------------------

    /// <summary>
    /// Adds a mapping unless it overlaps one (vhost's IOTLB UPDATE; the vhost model answers EEXIST on false).
    /// Throws <see cref="ArgumentException"/> for a size of 0, a range that wraps, or one outside [First, Last].
    /// </summary>
    public bool TryMap(ulong iova, ulong size, ulong target, MemoryAccess perm)
    {
        CheckRange(iova, size);
        if (target + (size - 1) < target)
            throw new ArgumentException($"target range 0x{target:x} + 0x{size:x} wraps past the end of the 64-bit space", nameof(target));
        lock (_writeLock)
        {
            if (_pending.Overlaps(iova, iova + (size - 1))) return false;
            _pending = _pending.Insert(new IovaMapping(iova, size, target, perm));
            PublishLocked();
            return true;
        }
    }

    /// <summary>
    /// Replaces every mapping with <paramref name="maps"/> in one publication (a device's set_map installing a whole
    /// table): O(n log n) instead of n inserts. False, changing nothing, when two of them overlap. Throws
    /// <see cref="ArgumentException"/> as <see cref="TryMap"/> does for a bad range.
    /// </summary>
    public bool TryReplace(IReadOnlyList<IovaMapping> maps)
    {
        ArgumentNullException.ThrowIfNull(maps);
        var sorted = new IovaMapping[maps.Count];
        for (int i = 0; i < sorted.Length; i++)
        {
            var m = maps[i];
            CheckRange(m.Iova, m.Size);
            if (m.Target + (m.Size - 1) < m.Target)
                throw new ArgumentException($"target range 0x{m.Target:x} + 0x{m.Size:x} wraps past the end of the 64-bit space", nameof(maps));
            sorted[i] = m;
        }
        Array.Sort(sorted, static (a, b) => a.Iova.CompareTo(b.Iova));
        for (int i = 1; i < sorted.Length; i++)
            if (sorted[i].Iova <= sorted[i - 1].Last) return false;
        lock (_writeLock)
        {
            _pending = Snapshot.Of(sorted);
            PublishLocked();
            return true;
        }
    }

    /// <summary>As <see cref="TryMap"/>; an overlap throws <see cref="InvalidOperationException"/> naming the mapping in the way.</summary>
    public IovaMapping Map(ulong iova, ulong size, ulong target, MemoryAccess perm = MemoryAccess.ReadWrite)
    {
        if (!TryMap(iova, size, target, perm))
            throw new InvalidOperationException(
                $"[0x{iova:x}, 0x{iova + (size - 1):x}] overlaps {string.Join(", ", FindOverlapping(iova, size))} in {Name} (EEXIST); remove it first");
        return new IovaMapping(iova, size, target, perm);
    }

    /// <summary>The mappings sharing a byte with [iova, iova + size), in IOVA order.</summary>
    public IReadOnlyList<IovaMapping> FindOverlapping(ulong iova, ulong size)
    {
        if (size == 0) return [];
        var s = Volatile.Read(ref _snapshot);
        var end = iova + (size - 1);
        if (end < iova) end = ulong.MaxValue;
        var list = new List<IovaMapping>();
        if (!s.Floor(iova, out var c, out var i)) (c, i) = (0, 0);
        for (; c < s.Chunks.Length; c++, i = 0)
            for (var maps = s.Chunks[c]; i < maps.Length; i++)
            {
                if (maps[i].Iova > end) return list;
                if (maps[i].Overlaps(iova, size)) list.Add(maps[i]);
            }
        return list;
    }

    /// <summary>Whether any mapping shares a byte with [iova, iova + size).</summary>
    public bool Overlaps(ulong iova, ulong size)
    {
        if (size == 0) return false;
        var end = iova + (size - 1);
        return Volatile.Read(ref _snapshot).Overlaps(iova, end < iova ? ulong.MaxValue : end);
    }

    /// <summary>The mapping containing <paramref name="iova"/>, if any.</summary>
    public IovaMapping? Find(ulong iova)
    {
        var s = Volatile.Read(ref _snapshot);
        return s.Floor(iova, out var c, out var i) && s.Chunks[c][i].Contains(iova) ? s.Chunks[c][i] : null;
    }

    /// <summary>
    /// Removes every mapping that shares a byte with [iova, iova + size), whole (vhost's <c>vhost_iotlb_del_range</c>:
    /// entries are never split). Returns the removed mappings. A size of 0 removes nothing.
    /// </summary>
    public IReadOnlyList<IovaMapping> RemoveOverlapping(ulong iova, ulong size)
    {
        if (size == 0) return [];
        var end = iova + (size - 1);
        if (end < iova) end = ulong.MaxValue;
        lock (_writeLock)
        {
            var removed = new List<IovaMapping>();
            _pending = _pending.RemoveWhere(iova, end, static _ => true, removed);
            if (removed.Count > 0) PublishLocked();
            return removed;
        }
    }

    /// <summary>Removes the mapping exactly equal to [iova, iova + size) (any target and perm); false when there is none.</summary>
    public bool Remove(ulong iova, ulong size)
    {
        lock (_writeLock)
        {
            var removed = new List<IovaMapping>(1);
            _pending = _pending.RemoveWhere(iova, iova, m => m.Iova == iova && m.Size == size, removed);
            if (removed.Count == 0) return false;
            PublishLocked();
            return true;
        }
    }

    /// <summary>Removes every mapping.</summary>
    public void Clear()
    {
        lock (_writeLock)
        {
            _pending = Empty;
            PublishLocked();
        }
    }

    /// <summary>
    /// Defers publishing changes until the returned scope is disposed (nested scopes publish at the outermost end):
    /// translations meanwhile see the table as it was before the batch.
    /// </summary>
    public IDisposable BeginBatch()
    {
        lock (_writeLock) _batchDepth++;
        return new BatchScope(this);
    }

    sealed class BatchScope(IovaSpace space) : IDisposable
    {
        int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) != 0) return;
            lock (space._writeLock)
            {
                if (--space._batchDepth == 0 && space._batchDirty) space.PublishLocked();
            }
        }
    }

    void PublishLocked()
    {
        if (_batchDepth > 0)
        {
            _batchDirty = true;
            return;
        }
        _batchDirty = false;
        Volatile.Write(ref _snapshot, _pending);
        Interlocked.Increment(ref _generation);
        Vm.OnMappingsChanged();
    }

    void CheckRange(ulong iova, ulong size)
    {
        if (size == 0) throw new ArgumentException($"mapping size must be at least 1 byte (IOVA 0x{iova:x})", nameof(size));
        if (iova + (size - 1) < iova)
            throw new ArgumentException($"IOVA range 0x{iova:x} + 0x{size:x} wraps past the end of the 64-bit space", nameof(size));
        if (iova < First || iova + (size - 1) > Last)
            throw new ArgumentOutOfRangeException(nameof(iova),
                $"IOVA range [0x{iova:x}, 0x{iova + (size - 1):x}] is outside {Name}'s range [0x{First:x}, 0x{Last:x}]");
    }

    // ---- translation ----------------------------------------------------------------------------------

    /// <inheritdoc/>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public override bool TryTranslate(ulong address, long length, MemoryAccess access, out ulong target, out long contiguous, out MemoryFault fault)
    {
        if (!Lookup(address, length, access, out var m, out fault))
        {
            target = 0;
            contiguous = 0;
            return false;
        }
        var offset = address - m.Iova;
        target = m.Target + offset;
        var left = m.Size - offset; // ≥ 1
        contiguous = length <= 1 ? 1 : (ulong)length <= left ? length : (long)left;
        return true;
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    internal override bool TryResolveExtent(ulong address, long length, MemoryAccess access, out HostExtent extent, out MemoryFault fault)
    {
        extent = default;
        if (!Lookup(address, length, access, out var m, out fault)) return false;
        var target = m.Target + (address - m.Iova);
        if (!Parent.TryResolveExtent(target, length, access, out var p, out fault)) return false;
        // The run is the IOVA mapping clipped to the parent's run around the target.
        var below = Math.Min(address - m.Iova, target - p.First);
        var above = Math.Min(m.Last - address, p.Last - target);
        extent = new HostExtent(address - below, address + above, p.HostOf(target - below), p.Slot, m.Perm & p.Perm);
        return true;
    }

    /// <summary>The mapping containing <paramref name="address"/> that allows <paramref name="access"/>, or a counted fault.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    bool Lookup(ulong address, long length, MemoryAccess access, out IovaMapping mapping, out MemoryFault fault)
    {
        var s = Volatile.Read(ref _snapshot);
        var chunks = s.Chunks;
        int h = _hint, c = h >> 8, i = h & 0xff;
        if ((uint)c >= (uint)chunks.Length || (uint)i >= (uint)chunks[c].Length || address - chunks[c][i].Iova >= chunks[c][i].Size)
        {
            if (!s.Floor(address, out c, out i) || address - chunks[c][i].Iova >= chunks[c][i].Size)
            {
                mapping = default;
                return Fault(out fault, address, address, length, access, MemoryFaultReason.Unmapped);
            }
            _hint = c << 8 | i;
        }
        mapping = chunks[c][i];
        if ((access & ~mapping.Perm) != 0) return Fault(out fault, address, address, length, access, MemoryFaultReason.Permission);
        fault = default;
        return true;
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: {Count} IOVA mapping(s) over {Parent.Name}";
}
