using VirtLab.Sdk.Measure;

namespace VirtLab.Plugins.Vfio.Type1;

/// <summary>
/// struct vfio_dma: one MAP_DMA mapping of [<see cref="Iova"/>, +<see cref="Size"/>) to user memory at
/// <see cref="Vaddr"/>, with its pinned pages (pfn_list) and, while dirty tracking runs, its own dirty bitmap of
/// ceil(npages/64)+1 words at the smallest IOMMU page size (the extra word is room for the shift that merges a dma
/// into a 64-bit word it shares with its neighbour).
/// </summary>
public sealed class VfioDma
{
    internal VfioDma(ulong iova, ulong vaddr, ulong size, DmaProt prot)
    {
        Iova = iova;
        Vaddr = vaddr;
        Size = size;
        Prot = prot;
    }

    public ulong Iova { get; }
    public ulong Vaddr { get; internal set; }
    public ulong Size { get; }
    public DmaProt Prot { get; }

    /// <summary>Pinned and mapped into every IOMMU domain of the container (false in a container of mediated devices only).</summary>
    public bool IommuMapped { get; internal set; }

    /// <summary>VFIO_DMA_UNMAP_FLAG_VADDR invalidated the vaddr; a MAP_DMA with FLAG_VADDR must supply a new one.</summary>
    public bool VaddrInvalid { get; internal set; }

    /// <summary>One past the last byte, without wrapping.</summary>
    internal UInt128 End => (UInt128)Iova + Size;

    public ulong Last => Iova + Size - 1;

    /// <summary>pfn_list: iova → (guest page frame, ref_count) of pages pinned through vfio_pin_pages.</summary>
    internal readonly Dictionary<ulong, (ulong Gfn, int Refs)> Pfns = [];

    public int PinnedPages => Pfns.Count;

    /// <summary>dma->bitmap while dirty tracking runs.</summary>
    internal WordBuffer? Bitmap;

    /// <summary>Bytes of the dirty bitmap (0 when tracking is off).</summary>
    public long BitmapBytes => Bitmap?.Bytes ?? 0;

    internal bool Contains(ulong iova) => iova >= Iova && iova - Iova < Size;

    public override string ToString()
        => $"vfio_dma iova [0x{Iova:x}, 0x{End:x}) {new Size((long)Math.Min(Size, long.MaxValue))} vaddr 0x{Vaddr:x} {Prot}" +
           $"{(IommuMapped ? " iommu-mapped" : "")}{(Pfns.Count > 0 ? $" pinned {Pfns.Count}" : "")}{(VaddrInvalid ? " vaddr-invalid" : "")}";
}

/// <summary>How a group's devices reach memory.</summary>
public enum VfioGroupKind
{
    /// <summary>A mediated device (mdev): no IOMMU of its own; it pins pages (vfio_pin_pages) or copies (vfio_dma_rw), so type1 sees what it touches.</summary>
    Emulated,
    /// <summary>An assigned device behind a real IOMMU domain: its DMA bypasses type1, so until it pins, every mapped page counts as dirty.</summary>
    Passthrough,
}

/// <summary>An IOMMU group (/dev/vfio/N). Create with <see cref="Emulated"/> or <see cref="Passthrough"/>, then add it to a container.</summary>
public sealed class VfioGroup
{
    VfioGroup(string name, VfioGroupKind kind, IommuGeometry? geometry)
    {
        Name = name;
        Kind = kind;
        Geometry = geometry;
    }

    /// <summary>A group of mediated devices (VFIO_EMULATED_IOMMU): starts in the pinned-page dirty scope.</summary>
    public static VfioGroup Emulated(string name = "mdev") => new(name, VfioGroupKind.Emulated, null);

    /// <summary>A group behind an IOMMU with <paramref name="geometry"/> (default: VT-d, 39-bit).</summary>
    public static VfioGroup Passthrough(string name = "pci", IommuGeometry? geometry = null)
        => new(name, VfioGroupKind.Passthrough, geometry ?? IommuGeometry.VtD());

    public string Name { get; }
    public VfioGroupKind Kind { get; }
    public IommuGeometry? Geometry { get; }

    /// <summary>The container this group is set to (VFIO_GROUP_SET_CONTAINER), if any.</summary>
    public VfioContainer? Container { get; internal set; }

    /// <summary>vfio_iommu_group.pinned_page_dirty_scope: the group reports what it dirties through page pinning.</summary>
    public bool PinnedPageDirtyScope { get; internal set; }

    /// <summary>Attached to the container's type1 IOMMU (after SET_IOMMU).</summary>
    public bool Attached { get; internal set; }

    public override string ToString() => $"group {Name} ({Kind}){(Attached ? " attached" : "")}{(PinnedPageDirtyScope ? " pinned-scope" : "")}";
}

/// <summary>A device that registered with the container for dma_unmap notifications (what mediated drivers do).</summary>
public interface IVfioDevice
{
    VfioGroup Group { get; }

    /// <summary>vfio_device_ops.dma_unmap: [iova, iova+size) is about to be unmapped; unpin every page pinned in it.</summary>
    void DmaUnmap(ulong iova, ulong size);
}
