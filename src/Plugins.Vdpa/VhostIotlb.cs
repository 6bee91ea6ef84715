namespace VirtLab.Plugins.Vdpa;

/// <summary>One vhost_iotlb_map: [Start, Last] (inclusive, as the kernel's interval tree) → Addr, with VHOST_ACCESS_* perm.</summary>
public readonly record struct IotlbMap(ulong Start, ulong Last, ulong Addr, byte Perm)
{
    public ulong Size => Last - Start + 1;
    public override string ToString() => $"[0x{Start:x}, 0x{Last:x}] → 0x{Addr:x} {PermName(Perm)}";
    public static string PermName(byte perm) => perm switch { 1 => "RO", 2 => "WO", 3 => "RW", _ => "perm " + perm };
}

/// <summary>
/// vhost's own bookkeeping of one address space (struct vhost_iotlb): the ranges userspace mapped, kept for the
/// overlap check (-EEXIST) and for set_map, which hands the whole table to the device. The device never reads
/// through this table; it reads through its own copy (the IOVA address space set_map fills).
/// Entries are disjoint and kept sorted by start.
/// </summary>
public sealed class VhostIotlb
{
    readonly List<IotlbMap> maps = new();

    public int Count => maps.Count;
    public IReadOnlyList<IotlbMap> Maps => maps;

    /// <summary>vhost_iotlb_itree_first: the lowest map intersecting [start, last], or null. Nothing when last &lt; start.</summary>
    public IotlbMap? First(ulong start, ulong last)
    {
        if (last < start) return null;
        int i = FirstEndingAtOrAfter(start);
        return i < maps.Count && maps[i].Start <= last ? maps[i] : null;
    }

    /// <summary>vhost_iotlb_add_range: callers check overlap first (vhost-vdpa does, returning -EEXIST).</summary>
    public void Add(ulong start, ulong last, ulong addr, byte perm)
    {
        if (last < start) throw new ArgumentException($"IOTLB range [0x{start:x}, 0x{last:x}] is empty or wraps");
        if (First(start, last) is { } m) throw new InvalidOperationException($"IOTLB range [0x{start:x}, 0x{last:x}] overlaps {m}");
        maps.Insert(FirstEndingAtOrAfter(start), new IotlbMap(start, last, addr, perm));
    }

    /// <summary>Removes every map intersecting [start, last] (whole maps, as vhost_vdpa_iotlb_unmap does); returns how many.</summary>
    public int RemoveOverlapping(ulong start, ulong last)
    {
        if (last < start) return 0;
        int i = FirstEndingAtOrAfter(start), n = 0;
        while (i < maps.Count && maps[i].Start <= last) { maps.RemoveAt(i); n++; }
        return n;
    }

    public void Clear() => maps.Clear();

    int FirstEndingAtOrAfter(ulong addr)
    {
        int lo = 0, hi = maps.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (maps[mid].Last < addr) lo = mid + 1; else hi = mid;
        }
        return lo;
    }
}
