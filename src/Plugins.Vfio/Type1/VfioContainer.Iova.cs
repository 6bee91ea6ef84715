using System.Runtime.CompilerServices;
using VirtLab.Sdk.Machine;

namespace VirtLab.Plugins.Vfio.Type1;

public sealed unsafe partial class VfioContainer
{
    IovaSpace? iova;

    /// <summary>
    /// The container's IOVA space (the SDK's <see cref="IovaSpace"/> over the VM's guest-physical space): one mapping per
    /// vfio_dma whose vaddr is guest RAM, IOVA → gpa with the mapping's prot. Devices reach guest memory only through
    /// it; a miss or a permission error is a counted fault, never a stray access. Null for a container without a VM.
    /// </summary>
    public IovaSpace? Iova => Vm is null ? null : LazyInitializer.EnsureInitialized(ref iova, () => new IovaSpace(Vm.PhysicalSpace, "vfio type1 IOVA"));

    /// <summary>iommu-&gt;lock, for trackers that read container state under it.</summary>
    internal object Gate => gate;

    internal int NonPinnedGroupsUnlocked => numNonPinnedGroups;

    internal List<VfioDma> DmasUnlocked => dmas;

    /// <summary>
    /// The IOTLB entry covering <paramref name="address"/> (a lookup in <see cref="Iova"/>): the mapping's range, or null
    /// on a miss. Without a VM the vfio_dma list stands in.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal (ulong Iova, ulong Size)? TranslateIova(ulong address)
    {
        if (Iova is { } space) return space.Find(address) is { } m ? (m.Iova, m.Size) : null;
        lock (gate) return FindDma(address, 1) is { } d ? (d.Iova, d.Size) : null;
    }

    static MemoryAccess Access(DmaProt p) => (MemoryAccess)(byte)p;   // IOMMU_READ/WRITE = MemoryAccess Read/Write

    /// <summary>Publishes the mapping in the IOVA space when its vaddr is guest RAM (re-targets it after a FLAG_VADDR update).</summary>
    void OnDmaLinked(VfioDma dma)
    {
        if (Iova is not { } space) return;
        space.Remove(dma.Iova, dma.Size);
        if (User.GuestPhysical(dma.Vaddr) is not { } gpa || gpa + (dma.Size - 1) < gpa) return;
        space.TryMap(dma.Iova, dma.Size, gpa, Access(dma.Prot));
    }

    void OnDmaUnlinked(VfioDma dma) => iova?.Remove(dma.Iova, dma.Size);

    /// <summary>vfio_dma_rw's copy: through the IOVA space into guest RAM (without a VM: copy_to_user at the vaddr).</summary>
    bool CopyThroughIova(ulong address, VfioDma dma, Span<byte> data, bool write)
    {
        if (Iova is { } space)
            return write ? space.TryWrite(address, data, out _) : space.TryRead(address, data, out _);
        var vaddr = dma.Vaddr + (address - dma.Iova);
        return write ? User.CopyTo(vaddr, data) : User.CopyFrom(vaddr, data);
    }
}
