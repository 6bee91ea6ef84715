using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Plugins.Vfio.Uapi;
using Xunit;
using static VirtLab.Sdk.Native.Errno;
using U = VirtLab.Plugins.Vfio.Uapi.VfioUapi;

namespace VirtLab.Plugins.Vfio.Tests;

/// <summary>
/// Each ioctl's errors case by case, in the order vfio_iommu_type1.c checks them (container.c for the container fd).
/// One row per rule: the smallest input that breaks exactly that rule.
/// </summary>
public class ErrnoTableTests
{
    const ulong P = Fx.Page;

    [Fact]
    public void Ioctl_numbers_and_struct_sizes_are_the_uapi_ones()
    {
        Assert.Equal(0x3b64u, U.GetApiVersion);
        Assert.Equal(0x3b65u, U.CheckExtension);
        Assert.Equal(0x3b66u, U.SetIommu);
        Assert.Equal(0x3b70u, U.IommuGetInfo);
        Assert.Equal(0x3b71u, U.IommuMapDma);
        Assert.Equal(0x3b72u, U.IommuUnmapDma);
        Assert.Equal(0x3b75u, U.IommuDirtyPages);
        Assert.Equal(32, U.DmaMap(0, 0, 0, 0).Length);
        Assert.Equal(24, U.DmaUnmap(0, 0, 0).Length);
        Assert.Equal(48, U.DirtyPagesGetBitmap(0, 0, default).Length);
        Assert.Equal(256UL << 20, U.DirtyBitmapSizeMax);
        Assert.Equal(8UL, U.DirtyBitmapBytes(1));
        Assert.Equal(8UL, U.DirtyBitmapBytes(64));
        Assert.Equal(16UL, U.DirtyBitmapBytes(65));
    }

    [Fact]
    public void Container_fd_before_and_after_SET_IOMMU()
    {
        using var c = new VfioContainer();
        Assert.Equal(0, c.Ioctl(U.GetApiVersion, 0));
        Assert.Equal(1, c.Ioctl(U.CheckExtension, U.Type1Iommu));
        Assert.Equal(1, c.Ioctl(U.CheckExtension, U.Type1v2Iommu));
        Assert.Equal(1, c.Ioctl(U.CheckExtension, U.UnmapAll));
        Assert.Equal(0, c.Ioctl(U.CheckExtension, U.UpdateVaddr));      // needs an iommu
        Assert.Equal(0, c.Ioctl(U.CheckExtension, U.NoIommuIommu));
        Fx.Errno(EINVAL, c.Ioctl(U.SetIommu, U.Type1v2Iommu));           // no group yet
        Fx.Errno(EINVAL, Fx.Map(c, 0, P));                               // no iommu: the container answers EINVAL
        c.AddGroup(VfioGroup.Emulated());
        Fx.Errno(ENODEV, c.Ioctl(U.SetIommu, U.NoIommuIommu));           // no driver claims it
        Fx.Errno(ENODEV, c.Ioctl(U.SetIommu, U.ReservedType1NestingIommu));
        Assert.Equal(0, c.Ioctl(U.SetIommu, U.Type1v2Iommu));
        Fx.Errno(EINVAL, c.Ioctl(U.SetIommu, U.Type1v2Iommu));           // already set
        Assert.Equal(0, c.Ioctl(U.CheckExtension, U.UpdateVaddr));      // mdevs present
        Assert.Equal(0, c.Ioctl(U.CheckExtension, U.DmaCcIommu));       // no domain
        Fx.Errno(ENOTTY, c.Ioctl(U.IommuEnable, new byte[8]));          // type1's default
    }

    [Fact]
    public void GET_INFO_reports_pgsizes_and_the_capability_chain()
    {
        using var c = Fx.Mdev();
        Fx.Errno(EFAULT, c.Ioctl(U.IommuGetInfo, new byte[15]));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuGetInfo, U.IommuInfo(argsz: 15)));

        // argsz 16: only argsz/flags/pgsizes are written; argsz tells the room the chain needs
        var small = U.IommuInfo(argsz: 16);
        Assert.Equal(0, c.Ioctl(U.IommuGetInfo, small));
        var si = VfioIommuInfo.Parse(small);
        Assert.Equal(U.InfoPgsizes | U.InfoCaps, si.Flags);
        Assert.Equal(U.PageMask, si.IovaPgSizes);
        Assert.Equal((uint)(24 + 32 + 16), si.ArgSz);
        Assert.Empty(si.Capabilities);

        var full = U.IommuInfo(argsz: 72);
        Assert.Equal(0, c.Ioctl(U.IommuGetInfo, full));
        var fi = VfioIommuInfo.Parse(full);
        Assert.Equal(24u, fi.CapOffset);
        Assert.Equal([(U.CapMigration, 24, 56), (U.CapDmaAvail, 56, 0)], fi.Capabilities.Select(k => (k.Id, k.Offset, k.Next)).ToArray());
        Assert.Equal(4096UL, fi.MigrationPgSizeBitmap);
        Assert.Equal(256UL << 20, fi.MaxDirtyBitmapSize);
        Assert.Equal((uint)U.DmaEntryLimit, fi.DmaAvail);

        // argsz claims room the buffer does not have: the copy of the chain faults
        var lying = new byte[40];
        BitConverter.TryWriteBytes(lying, 72u);
        Fx.Errno(EFAULT, c.Ioctl(U.IommuGetInfo, lying));
    }

    [Fact]
    public void GET_INFO_with_a_passthrough_group_lists_the_valid_iova_ranges()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Passthrough(vm);
        var buf = U.IommuInfo(4096);
        Assert.Equal(0, c.Ioctl(U.IommuGetInfo, buf));
        var i = VfioIommuInfo.Parse(buf);
        Assert.Equal(0x4020_1000UL, i.IovaPgSizes);
        Assert.Equal([(0UL, 0xfedf_ffffUL), (0xfef0_0000UL, (1UL << 39) - 1)], i.IovaRanges);
        Assert.Equal(1, c.Ioctl(U.CheckExtension, U.DmaCcIommu));
        Assert.Equal(1, c.Ioctl(U.CheckExtension, U.UpdateVaddr));
    }

    [Fact]
    public void MAP_DMA_rules_in_kernel_order()
    {
        using var c = Fx.Mdev(dmaLimit: 3);
        Fx.Errno(EFAULT, c.Ioctl(U.IommuMapDma, U.DmaMap(0, 0, P, 3).AsSpan(0, 31)));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuMapDma, U.DmaMap(0, 0, P, 3, argsz: 31)));
        Fx.Errno(EINVAL, Fx.Map(c, 0, P, flags: 8));                                  // unknown flag
        Fx.Errno(EINVAL, Fx.Map(c, 0, P, flags: 0));                                  // no READ/WRITE
        Fx.Errno(EINVAL, Fx.Map(c, 0, P, flags: U.DmaMapFlagVaddr | U.DmaMapFlagRead));
        Fx.Errno(EINVAL, Fx.Map(c, 0, 0));                                            // size 0
        Fx.Errno(EINVAL, Fx.Map(c, 0x800, P));                                        // iova not page aligned
        Fx.Errno(EINVAL, Fx.Map(c, 0, P, vaddr: 0x10_0000_0800));                     // vaddr not aligned
        Fx.Errno(EINVAL, Fx.Map(c, 0, P + 1));                                        // size not aligned
        Fx.Errno(EINVAL, Fx.Map(c, ulong.MaxValue - P + 1, 2 * P));                   // iova wraps
        Fx.Errno(EINVAL, Fx.Map(c, 0, 2 * P, vaddr: ulong.MaxValue - P + 1));          // vaddr wraps
        Assert.Equal(0, Fx.Map(c, 16 * P, 4 * P));
        Fx.Errno(EEXIST, Fx.Map(c, 18 * P, 4 * P));                                   // overlaps the tail
        Fx.Errno(EEXIST, Fx.Map(c, 12 * P, 8 * P));                                   // covers it
        Fx.Errno(EEXIST, Fx.Map(c, 17 * P, P));                                       // inside it
        Fx.Errno(ENOENT, Fx.Map(c, 64 * P, P, flags: U.DmaMapFlagVaddr));             // nothing to update
        Fx.Errno(EINVAL, Fx.Map(c, 16 * P, 4 * P, flags: U.DmaMapFlagVaddr));          // vaddr not invalidated
        Assert.Equal(0, Fx.Map(c, 32 * P, P));
        Assert.Equal(0, Fx.Map(c, 40 * P, P));
        Fx.Errno(ENOSPC, Fx.Map(c, 48 * P, P));                                       // dma_entry_limit 3
        Assert.Equal(0, Fx.Unmap(c, 32 * P, P));
        Assert.Equal(0, Fx.Map(c, 48 * P, P));                                        // an entry came back
    }

    [Fact]
    public void MAP_DMA_against_an_iommu_aperture_and_pinning()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Passthrough(vm);
        var ram = c.User.VaddrOf(vm.TestSlot.Gpa);
        Fx.Errno(EINVAL, Fx.Map(c, 1UL << 39, P, vaddr: ram));                        // beyond the 39-bit aperture
        Fx.Errno(EINVAL, Fx.Map(c, 0xfee0_0000, P, vaddr: ram));                      // the MSI window is reserved
        Fx.Errno(EFAULT, Fx.Map(c, 0, P, vaddr: 0x10_0000_0000));                     // pinning fails: not guest RAM
        Assert.Empty(c.Dmas);                                                         // ... and the dma is gone
        Assert.Equal(0, Fx.Map(c, 0, (ulong)vm.TestSlot.Size.Bytes, vaddr: ram));
        Assert.True(c.Dmas[0].IommuMapped);
    }

    [Fact]
    public void MAP_DMA_while_tracking_refuses_a_mapping_whose_bitmap_would_exceed_INT_MAX_pages()
    {
        using var c = Fx.Mdev();
        Assert.Equal(0, Fx.Start(c));
        var eightTiB = (ulong)int.MaxValue * P + P;                                  // INT_MAX + 1 pages
        Fx.Errno(EINVAL, Fx.Map(c, 0, eightTiB));
        Assert.Empty(c.Dmas);                                                         // vfio_remove_dma after the failed alloc
        Assert.Equal(0, Fx.Map(c, 0, (ulong)int.MaxValue * P));                       // INT_MAX pages is allowed
        Assert.Equal((1L << 28) + 8, c.Dmas[0].BitmapBytes);                          // 256 MiB + the shift word, committed lazily
    }

    [Fact]
    public void UNMAP_DMA_rules_in_kernel_order()
    {
        using var c = Fx.Mdev();
        Assert.Equal(0, Fx.Map(c, 16 * P, 4 * P));
        Assert.Equal(0, Fx.Map(c, 20 * P, 4 * P));
        using var bm = c.User.Allocate(64);
        var good = new VfioBitmap(P, 8, bm.Address);
        Fx.Errno(EFAULT, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, 0).AsSpan(0, 23)));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, 0, argsz: 23)));
        Fx.Errno(EINVAL, Fx.Unmap(c, 16 * P, 4 * P, flags: 8));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(0, 0, U.DmaUnmapFlagGetDirtyBitmap | U.DmaUnmapFlagAll, good)));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, U.DmaUnmapFlagGetDirtyBitmap, good, argsz: 24)));
        Fx.Errno(EFAULT, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, U.DmaUnmapFlagGetDirtyBitmap, good).AsSpan(0, 40)));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, U.DmaUnmapFlagGetDirtyBitmap, good with { Data = U.TaskSizeMax })));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, U.DmaUnmapFlagGetDirtyBitmap, good with { Size = 0 })));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 65 * 64 * P, U.DmaUnmapFlagGetDirtyBitmap, good)));   // 8 bytes < 65 words
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, U.DmaUnmapFlagGetDirtyBitmap, good with { Size = U.DirtyBitmapSizeMax + 8 })));
        Fx.Errno(EBUSY, Fx.Unmap(c, 16 * P, 4 * P, flags: U.DmaUnmapFlagVaddr));      // mdevs present
        Fx.Errno(EINVAL, Fx.Unmap(c, 16 * P + 1, 4 * P));                              // iova not aligned
        Fx.Errno(EINVAL, Fx.Unmap(c, 16 * P, 4 * P, flags: U.DmaUnmapFlagAll));        // ALL wants iova = size = 0
        Fx.Errno(EINVAL, Fx.Unmap(c, 16 * P, 0));
        Fx.Errno(EINVAL, Fx.Unmap(c, 16 * P, 4 * P + 1));
        Fx.Errno(EINVAL, Fx.Unmap(c, ulong.MaxValue - P + 1, 2 * P));                  // wraps
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, U.DmaUnmapFlagGetDirtyBitmap, good)));   // not tracking
        Assert.Equal(0, Fx.Start(c));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuUnmapDma, U.DmaUnmap(16 * P, 4 * P, U.DmaUnmapFlagGetDirtyBitmap, good with { PgSize = 2 * P })));
        Fx.Errno(EINVAL, Fx.Unmap(c, 17 * P, 4 * P));                                  // starts inside a mapping
        Fx.Errno(EINVAL, Fx.Unmap(c, 16 * P, 6 * P));                                  // ends inside one

        var none = U.DmaUnmap(100 * P, 4 * P, 0);
        Assert.Equal(0, c.Ioctl(U.IommuUnmapDma, none));                               // nothing there: success, size 0
        Assert.Equal(0UL, U.Get64(none, 16));
        var both = U.DmaUnmap(0, 64 * P, 0);
        Assert.Equal(0, c.Ioctl(U.IommuUnmapDma, both));
        Assert.Equal(8 * P, U.Get64(both, 16));                                        // the size written back
        Assert.Empty(c.Dmas);
    }

    [Fact]
    public void UNMAP_DMA_on_a_v1_container_ignores_a_range_starting_inside_a_mapping()
    {
        using var c = new VfioContainer();
        c.AddGroup(VfioGroup.Emulated());
        c.SetIommu(U.Type1Iommu);
        Assert.Equal(0, Fx.Map(c, 16 * P, 4 * P));
        var a = U.DmaUnmap(17 * P, P, 0);
        Assert.Equal(0, c.Ioctl(U.IommuUnmapDma, a));                                  // v1: success, nothing unmapped
        Assert.Equal(0UL, U.Get64(a, 16));
        var b = U.DmaUnmap(16 * P, P, 0);
        Assert.Equal(0, c.Ioctl(U.IommuUnmapDma, b));                                  // v1: covering the first iova unmaps all of it
        Assert.Equal(4 * P, U.Get64(b, 16));
        Fx.Errno(EACCES, Fx.Start(c));                                                 // dirty tracking is v2 only
    }

    [Fact]
    public void DIRTY_PAGES_rules_in_kernel_order()
    {
        using var c = Fx.Mdev();
        Assert.Equal(0, Fx.Map(c, 16 * P, 4 * P));
        Assert.Equal(0, Fx.Map(c, 20 * P, 4 * P));
        using var buf = c.User.Allocate(64);
        Fx.Errno(EFAULT, c.Ioctl(U.IommuDirtyPages, new byte[7]));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuDirtyPages, U.DirtyPages(U.DirtyPagesFlagStart, argsz: 7)));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuDirtyPages, U.DirtyPages(8)));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuDirtyPages, U.DirtyPages(0)));
        Fx.Errno(EINVAL, c.Ioctl(U.IommuDirtyPages, U.DirtyPages(U.DirtyPagesFlagStart | U.DirtyPagesFlagStop)));
        Assert.Equal(0, c.Ioctl(U.IommuDirtyPages, U.DirtyPages(U.DirtyPagesFlagStop)));   // stopping a stopped tracker is fine

        VfioBitmap Bm(ulong pg = P, ulong size = 8, ulong? data = null) => new(pg, size, data ?? buf.Address);
        long Get(ulong iova, ulong size, VfioBitmap bm, uint? argsz = null, int? len = null)
        {
            var a = U.DirtyPagesGetBitmap(iova, size, bm, argsz: argsz);
            return c.Ioctl(U.IommuDirtyPages, a.AsSpan(0, len ?? a.Length));
        }

        Fx.Errno(EINVAL, Get(16 * P, 8 * P, Bm(), argsz: 8));                          // no room for the get struct
        Fx.Errno(EINVAL, Get(16 * P, 8 * P, Bm(), argsz: 47));
        Fx.Errno(EFAULT, Get(16 * P, 8 * P, Bm(), len: 40));                           // the get struct is not all there
        Fx.Errno(EINVAL, Get(ulong.MaxValue - P + 1, 2 * P, Bm()));                    // wraps
        Fx.Errno(EINVAL, Get(16 * P, 8 * P, Bm(data: U.TaskSizeMax)));                 // access_ok
        Fx.Errno(EINVAL, Get(16 * P, P - 1, Bm()));                                    // no pages
        Fx.Errno(EINVAL, Get(16 * P, 8 * P, Bm(size: 0)));
        Fx.Errno(EINVAL, Get(16 * P, 8 * P, Bm(size: U.DirtyBitmapSizeMax + 1)));
        Fx.Errno(EINVAL, Get(16 * P, 128 * P, Bm(size: 8)));                           // 128 pages need 16 bytes
        Fx.Errno(EINVAL, Get(16 * P, 8 * P, Bm(pg: 2 * P)));                           // only the smallest page size
        Fx.Errno(EINVAL, Get(16 * P + 512, 8 * P, Bm()));
        Fx.Errno(EINVAL, Get(16 * P, 8 * P + 512, Bm()));
        Fx.Errno(EINVAL, Get(16 * P, 8 * P, Bm()));                                    // tracking not started
        Assert.Equal(0, Fx.Start(c));
        Assert.Equal(0, Fx.Start(c));                                                  // starting twice is fine
        Fx.Errno(EINVAL, Get(17 * P, 7 * P, Bm()));                                    // cuts the first mapping
        Fx.Errno(EINVAL, Get(16 * P, 6 * P, Bm()));                                    // cuts the second
        Fx.Errno(EFAULT, Get(16 * P, 8 * P, Bm(data: 0x1000)));                        // not user memory: copy_to_user faults
        Assert.Equal(0, Get(16 * P, 8 * P, Bm()));
        Assert.Equal(0, Get(0, 64 * P, Bm()));                                         // holes around them are fine
    }

    [Fact]
    public void DIRTY_PAGES_on_a_v1_container_is_EACCES_before_anything_is_read()
    {
        using var c = new VfioContainer();
        c.AddGroup(VfioGroup.Emulated());
        c.SetIommu(U.Type1Iommu);
        Fx.Errno(EACCES, c.Ioctl(U.IommuDirtyPages, Span<byte>.Empty));
    }

    [Fact]
    public void Typed_methods_throw_the_same_errno_with_a_reason()
    {
        using var c = Fx.Mdev();
        c.MapDma(16 * P, 0x10_0000_0000, 4 * P);
        var e = Assert.Throws<VfioException>(() => c.MapDma(18 * P, 0x10_0000_0000, 4 * P));
        Assert.Equal(EEXIST, e.Errno);
        Assert.Contains("overlaps vfio_dma iova [0x10000, 0x14000)", e.Message);
        e = Assert.Throws<VfioException>(() => c.GetDirtyBitmap(16 * P, 4 * P));
        Assert.Equal(EINVAL, e.Errno);
        Assert.Contains("not started", e.Message);
    }
}
