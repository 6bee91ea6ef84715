namespace VirtLab.Plugins.Vfio.Type1;

public sealed unsafe partial class VfioContainer
{
    // The container's IOVA space (IOVA → guest-physical). Filled from the vfio_dma list.

    /// <summary>iommu-&gt;lock, for trackers that read container state under it.</summary>
    internal object Gate => gate;

    internal int NonPinnedGroupsUnlocked => numNonPinnedGroups;

    internal List<VfioDma> DmasUnlocked => dmas;

    /// <summary>The IOTLB entry covering <paramref name="iova"/>: the mapping's range, or null on a miss.</summary>
    internal (ulong Iova, ulong Size)? TranslateIova(ulong iova)
    {
        lock (gate) return FindDma(iova, 1) is { } d ? (d.Iova, d.Size) : null;
    }

    void OnDmaLinked(VfioDma dma) { }

    void OnDmaUnlinked(VfioDma dma) { }

    /// <summary>copy_to_user / copy_from_user at the mapping's vaddr for vfio_dma_rw.</summary>
    bool CopyThroughIova(ulong iova, VfioDma dma, Span<byte> data, bool write)
    {
        var vaddr = dma.Vaddr + (iova - dma.Iova);
        return write ? User.CopyTo(vaddr, data) : User.CopyFrom(vaddr, data);
    }
}
