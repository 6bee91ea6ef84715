using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// One IOVA mapping: [<see cref="Iova"/>, <see cref="Last"/>] → [<see cref="Target"/>, …) in the parent space, with
/// <see cref="Perm"/> (a vhost IOTLB entry, a VFIO type1 <c>vfio_dma</c>).
/// </summary>
public readonly record struct IovaMapping(ulong Iova, ulong Size, ulong Target, MemoryAccess Perm)
{
    /// <summary>The last IOVA of the mapping (inclusive, as vhost's <c>last</c>; the mapping may end at 2^64 − 1).</summary>
    public ulong Last => Iova + (Size - 1);

    public bool Contains(ulong iova) => iova - Iova < Size;

    /// <summary>Whether [iova, iova + size) shares a byte with this mapping.</summary>
    public bool Overlaps(ulong iova, ulong size)
    {
        if (size == 0) return false;
        var end = iova + (size - 1);
        if (end < iova) end = ulong.MaxValue; // clamp a range that wraps
        return iova <= Last && Iova <= end;
    }

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
/// removed mapping. Lookups first try the last hit (an index validated against the current snapshot), then a
/// branch-free binary search. <see cref="BeginBatch"/> defers publication (vhost's IOTLB_BATCH_BEGIN … END).
/// </para>
/// </summary>
public sealed class IovaSpace : AddressSpace
{
    /// <summary>
    /// An immutable sorted table. Lookups go through a two-level index so a random lookup touches few cache lines:
    /// <see cref="Top"/> holds every 16th start (small enough to stay in L1), <see cref="Starts"/> all starts padded
    /// to a multiple of 16 with <c>ulong.MaxValue</c>, so the last level is a fixed 16-wide branch-free count.
    /// </summary>
    sealed class Snapshot
    {
        public const int Fan = 16;
        public readonly ulong[] Starts;
        public readonly ulong[] Top;
        public readonly IovaMapping[] Maps;

        public Snapshot(IovaMapping[] maps)
        {
            Maps = maps;
            Starts = new ulong[(maps.Length + Fan - 1) / Fan * Fan];
            Array.Fill(Starts, ulong.MaxValue);
            for (int i = 0; i < maps.Length; i++) Starts[i] = maps[i].Iova;
            Top = new ulong[Starts.Length / Fan];
            for (int b = 0; b < Top.Length; b++) Top[b] = Starts[b * Fan];
        }
    }

    static readonly Snapshot Empty = new([]);

    readonly object writeLock = new();
    readonly List<IovaMapping> master = []; // sorted by Iova; writers only, under writeLock
    Snapshot snapshot = Empty;
    int hint; // index of the last hit in the current snapshot (validated before use; races only cost a miss)
    long generation;
    int batchDepth;
    bool batchDirty;

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

    public override long Generation => Volatile.Read(ref generation) + Parent.Generation;

    /// <summary>The published mappings, sorted by IOVA.</summary>
    public IReadOnlyList<IovaMapping> Mappings => Volatile.Read(ref snapshot).Maps;

    public int Count => Volatile.Read(ref snapshot).Maps.Length;

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
        lock (writeLock)
        {
            int i = LowerBound(iova);
            if (i > 0 && master[i - 1].Overlaps(iova, size)) return false;
            if (i < master.Count && master[i].Overlaps(iova, size)) return false;
            master.Insert(i, new IovaMapping(iova, size, target, perm));
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
        var s = Volatile.Read(ref snapshot);
        var end = iova + (size - 1);
        if (end < iova) end = ulong.MaxValue;
        var list = new List<IovaMapping>();
        for (int i = Math.Max(0, Search(s, iova)); i < s.Maps.Length && s.Maps[i].Iova <= end; i++)
            if (s.Maps[i].Overlaps(iova, size)) list.Add(s.Maps[i]);
        return list;
    }

    /// <summary>Whether any mapping shares a byte with [iova, iova + size).</summary>
    public bool Overlaps(ulong iova, ulong size) => FindOverlapping(iova, size).Count > 0;

    /// <summary>The mapping containing <paramref name="iova"/>, if any.</summary>
    public IovaMapping? Find(ulong iova)
    {
        var s = Volatile.Read(ref snapshot);
        int i = Search(s, iova);
        return i >= 0 && s.Maps[i].Contains(iova) ? s.Maps[i] : null;
    }

    /// <summary>
    /// Removes every mapping that shares a byte with [iova, iova + size), whole (vhost's <c>vhost_iotlb_del_range</c>:
    /// entries are never split). Returns the removed mappings. A size of 0 removes nothing.
    /// </summary>
    public IReadOnlyList<IovaMapping> RemoveOverlapping(ulong iova, ulong size)
    {
        if (size == 0) return [];
        lock (writeLock)
        {
            var removed = master.Where(m => m.Overlaps(iova, size)).ToList();
            if (removed.Count == 0) return removed;
            master.RemoveAll(m => m.Overlaps(iova, size));
            PublishLocked();
            return removed;
        }
    }

    /// <summary>Removes the mapping exactly equal to [iova, iova + size) (any target and perm); false when there is none.</summary>
    public bool Remove(ulong iova, ulong size)
    {
        lock (writeLock)
        {
            int i = LowerBound(iova);
            if (i >= master.Count || master[i].Iova != iova || master[i].Size != size) return false;
            master.RemoveAt(i);
            PublishLocked();
            return true;
        }
    }

    /// <summary>Removes every mapping.</summary>
    public void Clear()
    {
        lock (writeLock)
        {
            master.Clear();
            PublishLocked();
        }
    }

    /// <summary>
    /// Defers publishing changes until the returned scope is disposed (nested scopes publish at the outermost end):
    /// translations meanwhile see the table as it was before the batch.
    /// </summary>
    public IDisposable BeginBatch()
    {
        lock (writeLock) batchDepth++;
        return new BatchScope(this);
    }

    sealed class BatchScope(IovaSpace space) : IDisposable
    {
        int done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref done, 1) != 0) return;
            lock (space.writeLock)
            {
                if (--space.batchDepth == 0 && space.batchDirty) space.PublishLocked();
            }
        }
    }

    void PublishLocked()
    {
        if (batchDepth > 0)
        {
            batchDirty = true;
            return;
        }
        batchDirty = false;
        Volatile.Write(ref snapshot, new Snapshot(master.ToArray()));
        Interlocked.Increment(ref generation);
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

    /// <summary>First index in <see cref="master"/> whose Iova ≥ <paramref name="iova"/>.</summary>
    int LowerBound(ulong iova)
    {
        int lo = 0, hi = master.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >>> 1;
            if (master[mid].Iova < iova) lo = mid + 1;
            else hi = mid;
        }
        return lo;
    }

    /// <summary>Index of the last mapping starting at or below <paramref name="address"/>, or −1 (branch-free).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    static int Search(Snapshot s, ulong address)
    {
        var top = s.Top;
        if (top.Length == 0 || top[0] > address) return -1;
        // Level 1: binary search of the block whose first start is the last one ≤ address.
        ref ulong t = ref MemoryMarshal.GetArrayDataReference(top);
        int lo = 0, n = top.Length;
        while (n > 1)
        {
            int half = n >>> 1;
            lo = Unsafe.Add(ref t, lo + half) <= address ? lo + half : lo;
            n -= half;
        }
        // Level 2: count the starts ≤ address among the block's 16 (sorted, padded with MaxValue): no branches.
        ref ulong b = ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(s.Starts), lo * Snapshot.Fan);
        int c = 0;
        for (int k = 1; k < Snapshot.Fan; k++) c += Unsafe.Add(ref b, k) <= address ? 1 : 0;
        var i = lo * Snapshot.Fan + c;
        return i < s.Maps.Length ? i : s.Maps.Length - 1; // only when a mapping starts at 2^64 − 1, like the padding
    }

    // ---- translation ----------------------------------------------------------------------------------

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
        var s = Volatile.Read(ref snapshot);
        var maps = s.Maps;
        int i = hint;
        if ((uint)i >= (uint)maps.Length || address - maps[i].Iova >= maps[i].Size)
        {
            i = Search(s, address);
            if (i < 0 || address - maps[i].Iova >= maps[i].Size)
            {
                mapping = default;
                return Fault(out fault, address, address, length, access, MemoryFaultReason.Unmapped);
            }
            hint = i;
        }
        mapping = maps[i];
        if ((access & ~mapping.Perm) != 0) return Fault(out fault, address, address, length, access, MemoryFaultReason.Permission);
        fault = default;
        return true;
    }

    public override string ToString() => $"{Name}: {Count} IOVA mapping(s) over {Parent.Name}";

    public override IRenderable ToRenderable()
    {
        var maps = Mappings;
        var t = new Table { Title = new TableTitle(Markup.Escape($"{Name}: IOVA space over {Parent.Name}")) };
        t.AddColumn("iova").AddColumn("last").AddColumn("size").AddColumn(Markup.Escape($"→ {Parent.Name}")).AddColumn("perm");
        const int shown = 32;
        foreach (var m in maps.Take(shown))
            t.AddRow($"0x{m.Iova:x}", $"0x{m.Last:x}", new Measure.Size((long)Math.Min(m.Size, long.MaxValue)).ToString(), $"0x{m.Target:x}", IovaMapping.PermName(m.Perm));
        if (maps.Count > shown) t.AddRow($"… {maps.Count - shown} more", "", "", "", "");
        t.Caption = new TableTitle(Markup.Escape($"{maps.Count} mapping(s), range [0x{First:x}, 0x{Last:x}], generation {Generation}, faults {Faults}"));
        return t;
    }
}
