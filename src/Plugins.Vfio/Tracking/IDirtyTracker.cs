namespace VirtLab.Plugins.Vfio.Tracking;

/// <summary>How a DMA write reached memory: what each tracking mechanism can see.</summary>
public enum DmaPath
{
    /// <summary>vfio_dma_rw: the kernel copies for a mediated device and sets the dirty bits itself.</summary>
    CpuCopy,
    /// <summary>A mediated device writing a page it pinned (vfio_pin_pages): type1 counts the page dirty while pinned.</summary>
    PinnedPage,
    /// <summary>An assigned device's DMA through its IOMMU: invisible to type1, seen by IOMMU dirty bits and device logging.</summary>
    Iommu,
}

/// <summary>Which events a tracker learns from.</summary>
public enum TrackerVisibility
{
    /// <summary>type1's contract: pinned pages and vfio_dma_rw writes; a mapped page of a group that does not pin counts as dirty.</summary>
    Type1,
    /// <summary>Hardware tracking (IOMMU dirty bits, device DMA logging): every DMA write, nothing else.</summary>
    Hardware,
}

/// <summary>
/// One dirty-page tracking strategy behind the common interface the comparison recipes drive: the container feeds
/// every attached tracker the same events (maps, unmaps, pins, device writes); <see cref="Query"/> reports and clears.
/// Bitmaps are one bit per <c>pgsize</c> page from <c>iova</c>, u64 words, bits only ever set by a query (the caller
/// supplies zeroed words), as the kernel interfaces do.
/// </summary>
public interface IDirtyTracker
{
    string Name { get; }

    TrackerVisibility Visibility { get; }

    /// <summary>Whether tracking runs (between <see cref="Start"/> and <see cref="Stop"/>).</summary>
    bool Running { get; }

    /// <summary>Starts tracking (START): from now on writes are recorded.</summary>
    void Start();

    /// <summary>Stops tracking and frees its state (STOP).</summary>
    void Stop();

    // The container's events. Each strategy observes only some of them; the rest are no-ops by default.
    void OnMap(ulong iova, ulong size) { }
    void OnUnmap(ulong iova, ulong size) { }
    void OnPin(ulong iova) { }
    void OnUnpin(ulong iova) { }
    void OnWrite(ulong iova, ulong length, DmaPath path) { }

    /// <summary>
    /// Reports the dirty pages of [<paramref name="iova"/>, +<paramref name="size"/>) into <paramref name="bitmap"/> (OR) and,
    /// unless <paramref name="noClear"/>, clears what it reported. Returns 0 or a negative errno when the strategy's
    /// rules reject the range (type1: a range may not cut a vfio_dma; iommufd: any aligned range).
    /// </summary>
    int Query(ulong iova, ulong size, ulong pgsize, Span<ulong> bitmap, bool noClear = false);

    /// <summary>Bytes of memory the strategy's own state takes now.</summary>
    long ModelBytes { get; }
}
