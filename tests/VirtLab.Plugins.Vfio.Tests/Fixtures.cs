using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Plugins.Vfio.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;
using U = VirtLab.Plugins.Vfio.Uapi.VfioUapi;

namespace VirtLab.Plugins.Vfio.Tests;

/// <summary>Containers the way QEMU sets them up, and ioctl helpers that go through the byte-level entry.</summary>
internal static class Fx
{
    public const ulong Page = 4096;

    /// <summary>A type1 v2 container with one mediated group (no IOMMU domain: MAP_DMA pins nothing).</summary>
    public static VfioContainer Mdev(Vm? vm = null, int dmaLimit = U.DmaEntryLimit)
    {
        var c = new VfioContainer(vm, dmaLimit);
        c.AddGroup(VfioGroup.Emulated());
        c.SetIommu();
        return c;
    }

    /// <summary>A type1 v2 container with one passthrough group (VT-d, 39-bit): MAP_DMA pins, every mapped page reports dirty.</summary>
    public static VfioContainer Passthrough(Vm vm)
    {
        var c = new VfioContainer(vm);
        c.AddGroup(VfioGroup.Passthrough());
        c.SetIommu();
        return c;
    }

    /// <summary>A small simulator VM (the plugin tests need no KVM).</summary>
    public static Vm SimVm(long mib = 16) => Vm.Create(new VmOptions(new Size(mib << 20)) { Backend = Backend.Sim });

    public static long Map(VfioContainer c, ulong iova, ulong size, ulong vaddr = 0x10_0000_0000, uint flags = U.DmaMapFlagRead | U.DmaMapFlagWrite)
        => c.Ioctl(U.IommuMapDma, U.DmaMap(iova, vaddr, size, flags));

    public static long Unmap(VfioContainer c, ulong iova, ulong size, uint flags = 0) => c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(iova, size, flags));

    public static long Start(VfioContainer c) => c.Ioctl(U.IommuDirtyPages, U.DirtyPages(U.DirtyPagesFlagStart));

    public static long Get(VfioContainer c, ulong iova, ulong size, UserBuffer buf, ulong? pgsize = null, ulong? bmSize = null)
        => c.Ioctl(U.IommuDirtyPages, U.DirtyPagesGetBitmap(iova, size, new VfioBitmap(pgsize ?? Page, bmSize ?? (ulong)buf.Length, buf.Address)));

    /// <summary>The set bits of a bitmap buffer, as page indexes from its first bit.</summary>
    public static long[] SetPages(ReadOnlySpan<ulong> words)
    {
        var list = new List<long>();
        for (var w = 0; w < words.Length; w++)
            for (var b = 0; b < 64; b++)
                if ((words[w] & (1UL << b)) != 0) list.Add(w * 64L + b);
        return list.ToArray();
    }

    public static void Errno(int errno, long ret) => Assert.Equal(-(long)errno, ret);
}
