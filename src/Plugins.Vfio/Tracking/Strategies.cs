using System.Runtime.CompilerServices;
using System.Numerics;
using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Plugins.Vfio.Uapi;
using static VirtLab.Plugins.Vfio.Type1.ErrnoExt;

namespace VirtLab.Plugins.Vfio.Tracking;

/// <summary>
/// The merged design: a bitmap per vfio_dma, set on pin and on vfio_dma_rw, read with VFIO_IOMMU_DIRTY_PAGES
/// GET_BITMAP (dmas sharing a 64-bit word shifted and OR-merged), cleared and refilled from the pinned pages on each
/// report. This tracker is the container itself: queries are the kernel path.
/// </summary>
public sealed class PerDmaBitmapTracker(VfioContainer container) : IDirtyTracker
{
    public string Name => "per-vfio_dma bitmaps (merged)";
    public TrackerVisibility Visibility => TrackerVisibility.Type1;
    public bool Running => container.DirtyTracking;
    public void Start() => container.StartDirtyTracking();
    public void Stop() => container.StopDirtyTracking();

    public unsafe int Query(ulong iova, ulong size, ulong pgsize, Span<ulong> bitmap, bool noClear = false)
    {
        if (noClear) return -EINVAL;   // type1 has no NO_CLEAR: every report clears
        fixed (ulong* w = bitmap)
            return (int)container.DirtyGetCore(iova, size, new VfioBitmap(pgsize, (ulong)bitmap.Length * 8, 0),
                new BitmapTarget((byte*)w, (ulong)bitmap.Length * 8)).Ret;
    }

    public long ModelBytes => container.BitmapBytes + container.PinnedPages * 32L;

    public override string ToString() => Name;
}

/// <summary>
/// The reviewer's proposal in the seed: one ordered set of dirty ranges orthogonal to the vfio_dma tree; the bitmap is
/// generated at query time for any page-aligned range (no vfio_dma may be cut? not a rule here: there is nothing to
/// cut), pinned pages and, for groups that do not pin, every iommu-mapped page added to the report.
/// </summary>
public sealed class DirtyRangeTreeTracker(VfioContainer container) : IDirtyTracker
{
    readonly RangeSet dirty = new();                  // in 4 KiB pages
    readonly Dictionary<ulong, int> pinned = [];      // page → references
    bool running;

    public string Name => "dirty-range tree (reviewer)";
    public TrackerVisibility Visibility => TrackerVisibility.Type1;
    public bool Running => running;
    public long Ranges => dirty.Count;

    public void Start()
    {
        lock (container.Gate)
        {
            running = true;
            dirty.Clear();
            foreach (var p in pinned.Keys) dirty.Add(p, p + 1);   // pinned pages start dirty
        }
    }

    public void Stop()
    {
        lock (container.Gate) { running = false; dirty.Clear(); }
    }


    public void OnUnmap(ulong iova, ulong size)
    {
        dirty.Remove(iova >> 12, (ulong)(((UInt128)iova + size) >> 12));
    }

    public void OnPin(ulong iova)
    {
        var p = iova >> 12;
        pinned[p] = pinned.GetValueOrDefault(p) + 1;
        if (running) dirty.Add(p, p + 1);
    }

    public void OnUnpin(ulong iova)
    {
        var p = iova >> 12;
        if (pinned.TryGetValue(p, out var n)) { if (n > 1) pinned[p] = n - 1; else pinned.Remove(p); }
    }

    public void OnWrite(ulong iova, ulong length, DmaPath path)
    {
        if (!running || path != DmaPath.CpuCopy || length == 0) return;
        dirty.Add(iova >> 12, (iova + length - 1 >> 12) + 1);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe int Query(ulong iova, ulong size, ulong pgsize, Span<ulong> bitmap, bool noClear = false)
    {
        if (pgsize != 4096 || (iova & 4095) != 0 || size == 0 || (size & 4095) != 0 || iova + size < iova) return -EINVAL;
        var first = iova >> 12;
        var pages = size >> 12;
        if ((ulong)bitmap.Length * 64 < pages) return -EINVAL;
        lock (container.Gate)
        {
            if (!running) return -EINVAL;
            fixed (ulong* w = bitmap)
            {
                var st = (P: (nint)w, First: first);
                dirty.Visit(first, first + pages, ref st, static (ref (nint P, ulong First) s, ulong a, ulong b) => Bits.Set((ulong*)s.P, a - s.First, b - a));
                foreach (var p in pinned.Keys)
                    if (p >= first && p - first < pages) Bits.Set(w, p - first, 1);
                if (container.NonPinnedGroupsUnlocked > 0)
                    foreach (var d in container.DmasUnlocked)
                    {
                        if (!d.IommuMapped || d.Iova >= iova + size || d.Last < iova) continue;
                        var s = Math.Max(d.Iova, iova);
                        var e = (ulong)UInt128.Min(d.End, (UInt128)iova + size);
                        Bits.Set(w, (s - iova) >> 12, (e - s) >> 12);
                    }
            }
            if (!noClear) dirty.Remove(first, first + pages);
        }
        return 0;
    }

    public long ModelBytes => dirty.Bytes + pinned.Count * 24L;

    public override string ToString() => $"{Name}: {dirty.Count} ranges";
}

/// <summary>
/// QEMU's walk of a vIOMMU's IOVA space for the dirty log (the seed's complaint): page by page, translate; on a hit,
/// GET_BITMAP for that mapping and skip past it; on a miss, step one page. The bits come from type1's per-vfio_dma
/// bitmaps; the cost is the walk: 2^27 translations for a 39-bit space.
/// </summary>
public sealed class QemuIovaWalkTracker(VfioContainer container) : IDirtyTracker
{
    ulong[] bounce = [];

    public string Name => "QEMU IOVA page walk";
    public TrackerVisibility Visibility => TrackerVisibility.Type1;
    public bool Running => container.DirtyTracking;
    public void Start() => container.StartDirtyTracking();
    public void Stop() => container.StopDirtyTracking();

    /// <summary>Translations the last query made.</summary>
    public long LastSteps { get; private set; }

    /// <summary>GET_BITMAP calls the last query made (one per mapping found).</summary>
    public long LastGets { get; private set; }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public unsafe int Query(ulong iova, ulong size, ulong pgsize, Span<ulong> bitmap, bool noClear = false)
    {
        if (noClear || pgsize == 0 || (pgsize & (pgsize - 1)) != 0 || (iova & (pgsize - 1)) != 0 || size == 0 || (size & (pgsize - 1)) != 0) return -EINVAL;
        if ((ulong)bitmap.Length * 64 < size / pgsize) return -EINVAL;
        var shift = BitOperations.TrailingZeroCount(pgsize);
        long steps = 0, gets = 0;
        fixed (ulong* outp = bitmap)
        {
            ulong a = iova, left = size;   // left: bytes of the range still to walk (no end address that could wrap)
            while (left > 0)
            {
                steps++;
                var hit = container.TranslateIova(a);
                if (hit is not { } m) { a += pgsize; left -= pgsize; continue; }
                // one IOTLB entry: ask the kernel for its dirty bits, then merge them into the caller's log
                var npages = m.Size >> shift;
                var words = (int)((npages + 63) / 64);
                if (bounce.Length < words) bounce = new ulong[words];
                Array.Clear(bounce, 0, words);
                fixed (ulong* b = bounce)
                {
                    var r = container.DirtyGetCore(m.Iova, m.Size, new VfioBitmap(pgsize, (ulong)words * 8, 0), new BitmapTarget((byte*)b, (ulong)words * 8));
                    gets++;
                    if (r.Failed) { LastSteps = steps; LastGets = gets; return (int)r.Ret; }
                    if (m.Iova >= iova) Bits.OrInto(outp, (m.Iova - iova) >> shift, b, Math.Min(npages, (m.Iova - iova + left - (a - m.Iova)) >> shift));
                }
                var skip = m.Size - (a - m.Iova);   // to the end of the entry
                if (skip >= left) break;
                a += skip;
                left -= skip;
            }
        }
        LastSteps = steps;
        LastGets = gets;
        return 0;
    }

    public long ModelBytes => container.BitmapBytes + bounce.Length * 8L;

    public override string ToString() => Name;
}

/// <summary>
/// iommufd-style tracking (IOMMU_HWPT_SET_DIRTY_TRACKING / IOMMU_HWPT_GET_DIRTY_BITMAP): the IOMMU sets a dirty bit
/// in the IOPTE of every page a device writes; a query reads (and, unless NO_CLEAR, clears) the bits of any range
/// aligned to its page size, regardless of how it was mapped. Sees every DMA write; knows nothing of pinning.
/// </summary>
public sealed class IommufdTracker(VfioContainer container) : IDirtyTracker
{
    readonly SparsePageBitmap iopte = new();
    bool running;

    public string Name => "iommufd IOPTE dirty bits";
    public TrackerVisibility Visibility => TrackerVisibility.Hardware;
    public bool Running => running;

    public void Start()
    {
        lock (container.Gate) { running = true; iopte.Dispose(); }
    }

    public void Stop()
    {
        lock (container.Gate) { running = false; iopte.Dispose(); }
    }

    public void OnUnmap(ulong iova, ulong size) => iopte.Clear(iova >> 12, size >> 12, free: true);

    public void OnWrite(ulong iova, ulong length, DmaPath path)
    {
        if (!running || length == 0) return;
        iopte.Set(iova >> 12, ((iova + length - 1) >> 12) - (iova >> 12) + 1);
    }

    public int Query(ulong iova, ulong size, ulong pgsize, Span<ulong> bitmap, bool noClear = false)
    {
        if (pgsize < 4096 || (pgsize & (pgsize - 1)) != 0) return -EINVAL;
        if ((iova & (pgsize - 1)) != 0 || (size & (pgsize - 1)) != 0 || size == 0) return -EINVAL;
        if (iova + (size - 1) < iova) return -Sdk.Native.Errno.ERANGE;   // EOVERFLOW in iommufd
        var ratio = BitOperations.TrailingZeroCount(pgsize) - 12;
        if ((ulong)bitmap.Length * 64 < size / pgsize) return -EINVAL;
        lock (container.Gate)
        {
            if (!running) return -EINVAL;
            iopte.Report(iova >> 12, size >> 12, ratio, bitmap, noClear);
        }
        return 0;
    }

    public long ModelBytes => iopte.Bytes;

    public override string ToString() => $"{Name}: {iopte.Chunks} leaf chunk(s)";
}

/// <summary>
/// Device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_START / REPORT / STOP): the device records its own DMA writes
/// in the IOVA ranges given at START (QEMU gives at most two: the hull of the mappings below 4 GiB and above) and
/// reports any power-of-two page size, only ever setting bits. Writes outside the ranges cannot be logged: counted.
/// </summary>
public sealed class DeviceDmaLoggingTracker(VfioContainer container) : IDirtyTracker
{
    readonly SparsePageBitmap log = new();
    readonly List<(ulong Start, ulong End)> ranges = [];   // inclusive ends, as struct vfio_device_feature_dma_logging_range gives
    bool running;

    public string Name => "device DMA logging";
    public TrackerVisibility Visibility => TrackerVisibility.Hardware;
    public bool Running => running;

    /// <summary>The logged ranges chosen at START.</summary>
    public IReadOnlyList<(ulong Start, ulong End)> LoggedRanges => ranges;

    /// <summary>Writes the device could not log (outside the ranges given at START).</summary>
    public long Unlogged { get; private set; }

    public void Start()
    {
        lock (container.Gate)
        {
            ranges.Clear();
            log.Dispose();
            Unlogged = 0;
            // QEMU's vfio_dirty_tracking_init: one range for the mappings below 4 GiB, one for those above
            ulong min32 = ulong.MaxValue, max32 = 0, min64 = ulong.MaxValue, max64 = 0;
            foreach (var d in container.DmasUnlocked)
            {
                if (d.Last < (1UL << 32)) { min32 = Math.Min(min32, d.Iova); max32 = Math.Max(max32, d.Last); }
                else { min64 = Math.Min(min64, d.Iova); max64 = Math.Max(max64, d.Last); }
            }
            if (min32 != ulong.MaxValue) ranges.Add((min32, max32));
            if (min64 != ulong.MaxValue) ranges.Add((min64, max64));
            running = true;
        }
    }

    public void Stop()
    {
        lock (container.Gate) { running = false; log.Dispose(); ranges.Clear(); }
    }


    public void OnWrite(ulong iova, ulong length, DmaPath path)
    {
        if (!running || length == 0) return;
        var last = iova + length - 1;
        foreach (var (s, e) in ranges)
            if (iova >= s && last <= e)
            {
                log.Set(iova >> 12, (last >> 12) - (iova >> 12) + 1);
                return;
            }
        Unlogged++;
    }

    public int Query(ulong iova, ulong size, ulong pgsize, Span<ulong> bitmap, bool noClear = false)
    {
        if (noClear || pgsize < 4096 || (pgsize & (pgsize - 1)) != 0 || size == 0) return -EINVAL;
        if ((iova & (pgsize - 1)) != 0 || (size & (pgsize - 1)) != 0 || iova + (size - 1) < iova) return -EINVAL;
        if ((ulong)bitmap.Length * 64 < size / pgsize) return -EINVAL;
        lock (container.Gate)
        {
            if (!running) return -EINVAL;
            log.Report(iova >> 12, size >> 12, BitOperations.TrailingZeroCount(pgsize) - 12, bitmap, noClear: false);
        }
        return 0;
    }

    public long ModelBytes => log.Bytes + ranges.Count * 16L;

    public override string ToString() => $"{Name}: {ranges.Count} range(s), {Unlogged} unlogged write(s)";
}
