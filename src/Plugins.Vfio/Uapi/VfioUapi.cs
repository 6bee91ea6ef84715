using System.Buffers.Binary;

namespace VirtLab.Plugins.Vfio.Uapi;

/// <summary>
/// The VFIO uAPI values this model speaks (<c>include/uapi/linux/vfio.h</c>): ioctl numbers, extension ids, flags and
/// the byte layouts of the structs (little-endian, x86-64 alignment). Every ioctl is <c>_IO(';', 100 + n)</c>: no size is
/// encoded in the number; each struct carries its own <c>argsz</c>.
/// </summary>
public static class VfioUapi
{
    public const int ApiVersion = 0;                         // VFIO_API_VERSION
    const uint Type = ';', Base = 100;
    static uint Io(uint nr) => (Type << 8) | (Base + nr);   // _IO(VFIO_TYPE, VFIO_BASE + nr)

    // ---- ioctl numbers ----
    public static readonly uint GetApiVersion = Io(0);      // 0x3b64
    public static readonly uint CheckExtension = Io(1);     // 0x3b65
    public static readonly uint SetIommu = Io(2);           // 0x3b66
    public static readonly uint GroupGetStatus = Io(3);
    public static readonly uint GroupSetContainer = Io(4);
    public static readonly uint GroupUnsetContainer = Io(5);
    public static readonly uint DeviceFeature = Io(17);     // same number as DIRTY_PAGES, on the device fd
    public static readonly uint IommuGetInfo = Io(12);      // 0x3b70
    public static readonly uint IommuMapDma = Io(13);       // 0x3b71
    public static readonly uint IommuUnmapDma = Io(14);     // 0x3b72
    public static readonly uint IommuEnable = Io(15);
    public static readonly uint IommuDisable = Io(16);
    public static readonly uint IommuDirtyPages = Io(17);   // 0x3b75

    // ---- extensions (VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU argument) ----
    public const uint Type1Iommu = 1, SpaprTceIommu = 2, Type1v2Iommu = 3, DmaCcIommu = 4, Eeh = 5,
        ReservedType1NestingIommu = 6, SpaprTcev2Iommu = 7, NoIommuIommu = 8, UnmapAll = 9, UpdateVaddr = 10;

    // ---- VFIO_IOMMU_GET_INFO ----
    public const uint InfoPgsizes = 1 << 0, InfoCaps = 1 << 1;
    public const ushort CapIovaRange = 1, CapMigration = 2, CapDmaAvail = 3;
    /// <summary>sizeof(struct vfio_iommu_type1_info): argsz, flags, iova_pgsizes, cap_offset, pad.</summary>
    public const int InfoSize = 24;
    /// <summary>offsetofend(vfio_iommu_type1_info, iova_pgsizes).</summary>
    public const int InfoMinSize = 16;
    /// <summary>sizeof(struct vfio_iommu_type1_info_cap_migration): header, flags, (pad), pgsize_bitmap, max_dirty_bitmap_size.</summary>
    public const int CapMigrationSize = 32;
    /// <summary>sizeof(struct vfio_iommu_type1_info_dma_avail) = 12, padded to 16 in the chain.</summary>
    public const int CapDmaAvailSize = 12;

    // ---- VFIO_IOMMU_MAP_DMA ----
    public const uint DmaMapFlagRead = 1 << 0, DmaMapFlagWrite = 1 << 1, DmaMapFlagVaddr = 1 << 2;
    /// <summary>sizeof(struct vfio_iommu_type1_dma_map) = offsetofend(size): argsz, flags, vaddr, iova, size.</summary>
    public const int DmaMapSize = 32;

    // ---- VFIO_IOMMU_UNMAP_DMA ----
    public const uint DmaUnmapFlagGetDirtyBitmap = 1 << 0, DmaUnmapFlagAll = 1 << 1, DmaUnmapFlagVaddr = 1 << 2;
    /// <summary>offsetofend(vfio_iommu_type1_dma_unmap, size): argsz, flags, iova, size; then data[] (a vfio_bitmap).</summary>
    public const int DmaUnmapSize = 24;
    /// <summary>sizeof(struct vfio_bitmap): pgsize, size (bytes), data (user pointer).</summary>
    public const int BitmapSize = 24;

    // ---- VFIO_IOMMU_DIRTY_PAGES ----
    public const uint DirtyPagesFlagStart = 1 << 0, DirtyPagesFlagStop = 1 << 1, DirtyPagesFlagGetBitmap = 1 << 2;
    /// <summary>offsetofend(vfio_iommu_type1_dirty_bitmap, flags).</summary>
    public const int DirtyBitmapSize = 8;
    /// <summary>sizeof(struct vfio_iommu_type1_dirty_bitmap_get): iova, size, bitmap.</summary>
    public const int DirtyBitmapGetSize = 40;

    // ---- VFIO_DEVICE_FEATURE (device DMA logging) ----
    public const uint DeviceFeatureMask = 0xffff, DeviceFeatureGet = 1 << 16, DeviceFeatureSet = 1 << 17, DeviceFeatureProbe = 1 << 18;
    public const uint FeatureDmaLoggingStart = 6, FeatureDmaLoggingStop = 7, FeatureDmaLoggingReport = 8;

    // ---- limits of vfio_iommu_type1.c ----
    /// <summary>DIRTY_BITMAP_PAGES_MAX = INT_MAX: bitmap_set() takes an int count.</summary>
    public const ulong DirtyBitmapPagesMax = int.MaxValue;
    /// <summary>DIRTY_BITMAP_SIZE_MAX = DIRTY_BITMAP_BYTES(DIRTY_BITMAP_PAGES_MAX) = 256 MiB.</summary>
    public static readonly ulong DirtyBitmapSizeMax = DirtyBitmapBytes(DirtyBitmapPagesMax);
    /// <summary>dma_entry_limit's default (U16_MAX): vfio_dma entries per container.</summary>
    public const int DmaEntryLimit = ushort.MaxValue;
    /// <summary>x86-64 TASK_SIZE_MAX with 4-level paging: what access_ok() accepts.</summary>
    public const ulong TaskSizeMax = (1UL << 47) - 4096;
    /// <summary>PAGE_MASK for 4 KiB pages: the container's pgsize_bitmap before any IOMMU domain exists.</summary>
    public const ulong PageMask = ~4095UL;

    /// <summary>DIRTY_BITMAP_BYTES(n) = ALIGN(n, 64) / 8 (saturating instead of wrapping for n near 2^64).</summary>
    public static ulong DirtyBitmapBytes(ulong pages) => pages > ulong.MaxValue - 63 ? ulong.MaxValue / 8 + 1 : ((pages + 63) & ~63UL) / 8;

    /// <summary>Names for the ioctls this model knows, for messages and tables.</summary>
    public static string IoctlName(uint request) => request switch
    {
        _ when request == GetApiVersion => "VFIO_GET_API_VERSION",
        _ when request == CheckExtension => "VFIO_CHECK_EXTENSION",
        _ when request == SetIommu => "VFIO_SET_IOMMU",
        _ when request == IommuGetInfo => "VFIO_IOMMU_GET_INFO",
        _ when request == IommuMapDma => "VFIO_IOMMU_MAP_DMA",
        _ when request == IommuUnmapDma => "VFIO_IOMMU_UNMAP_DMA",
        _ when request == IommuDirtyPages => "VFIO_IOMMU_DIRTY_PAGES",
        _ when request == IommuEnable => "VFIO_IOMMU_ENABLE",
        _ when request == IommuDisable => "VFIO_IOMMU_DISABLE",
        _ => $"ioctl 0x{request:x}",
    };

    // ---- struct builders: what QEMU puts in memory before the ioctl ----

    /// <summary>struct vfio_iommu_type1_dma_map.</summary>
    public static byte[] DmaMap(ulong iova, ulong vaddr, ulong size, uint flags, uint argsz = DmaMapSize)
    {
        var b = new byte[DmaMapSize];
        Put32(b, 0, argsz); Put32(b, 4, flags); Put64(b, 8, vaddr); Put64(b, 16, iova); Put64(b, 24, size);
        return b;
    }

    /// <summary>struct vfio_iommu_type1_dma_unmap, followed by a struct vfio_bitmap when <paramref name="bitmap"/> is given.</summary>
    public static byte[] DmaUnmap(ulong iova, ulong size, uint flags, VfioBitmap? bitmap = null, uint? argsz = null)
    {
        var len = DmaUnmapSize + (bitmap is null ? 0 : BitmapSize);
        var b = new byte[len];
        Put32(b, 0, argsz ?? (uint)len); Put32(b, 4, flags); Put64(b, 8, iova); Put64(b, 16, size);
        if (bitmap is { } bm) bm.WriteTo(b.AsSpan(DmaUnmapSize));
        return b;
    }

    /// <summary>struct vfio_iommu_type1_dirty_bitmap with only flags (START / STOP).</summary>
    public static byte[] DirtyPages(uint flags, uint argsz = DirtyBitmapSize)
    {
        var b = new byte[DirtyBitmapSize];
        Put32(b, 0, argsz); Put32(b, 4, flags);
        return b;
    }

    /// <summary>struct vfio_iommu_type1_dirty_bitmap + vfio_iommu_type1_dirty_bitmap_get (GET_BITMAP).</summary>
    public static byte[] DirtyPagesGetBitmap(ulong iova, ulong size, VfioBitmap bitmap, uint flags = DirtyPagesFlagGetBitmap, uint? argsz = null)
    {
        var b = new byte[DirtyBitmapSize + DirtyBitmapGetSize];
        Put32(b, 0, argsz ?? (uint)b.Length); Put32(b, 4, flags);
        Put64(b, 8, iova); Put64(b, 16, size);
        bitmap.WriteTo(b.AsSpan(24));
        return b;
    }

    /// <summary>struct vfio_iommu_type1_info with argsz set (the rest is filled by the kernel).</summary>
    public static byte[] IommuInfo(uint argsz = 4096)
    {
        var b = new byte[Math.Max(argsz, (uint)InfoSize)];
        Put32(b, 0, argsz);
        return b;
    }

    internal static void Put32(Span<byte> b, int off, uint v) => BinaryPrimitives.WriteUInt32LittleEndian(b[off..], v);
    internal static void Put64(Span<byte> b, int off, ulong v) => BinaryPrimitives.WriteUInt64LittleEndian(b[off..], v);
    internal static uint Get32(ReadOnlySpan<byte> b, int off) => BinaryPrimitives.ReadUInt32LittleEndian(b[off..]);
    internal static ulong Get64(ReadOnlySpan<byte> b, int off) => BinaryPrimitives.ReadUInt64LittleEndian(b[off..]);
}

/// <summary>struct vfio_bitmap: one bit per <see cref="PgSize"/> page, <see cref="Size"/> bytes at user address <see cref="Data"/>.</summary>
public readonly record struct VfioBitmap(ulong PgSize, ulong Size, ulong Data)
{
    public void WriteTo(Span<byte> b)
    {
        VfioUapi.Put64(b, 0, PgSize); VfioUapi.Put64(b, 8, Size); VfioUapi.Put64(b, 16, Data);
    }

    public static VfioBitmap ReadFrom(ReadOnlySpan<byte> b) => new(VfioUapi.Get64(b, 0), VfioUapi.Get64(b, 8), VfioUapi.Get64(b, 16));
}

/// <summary>One capability of a VFIO_IOMMU_GET_INFO chain, as decoded from the bytes.</summary>
public readonly record struct VfioInfoCapability(ushort Id, ushort Version, int Offset, int Next);

/// <summary>Decoded struct vfio_iommu_type1_info and its capability chain.</summary>
public sealed record VfioIommuInfo(uint ArgSz, uint Flags, ulong IovaPgSizes, uint CapOffset, IReadOnlyList<VfioInfoCapability> Capabilities,
    ulong? MigrationPgSizeBitmap, ulong? MaxDirtyBitmapSize, uint? DmaAvail, IReadOnlyList<(ulong Start, ulong End)> IovaRanges)
{
    /// <summary>Parses what VFIO_IOMMU_GET_INFO wrote into <paramref name="b"/>, following cap_offset and each header's next.</summary>
    public static VfioIommuInfo Parse(ReadOnlySpan<byte> b)
    {
        var argsz = VfioUapi.Get32(b, 0);
        var flags = VfioUapi.Get32(b, 4);
        var pgsizes = VfioUapi.Get64(b, 8);
        var capOff = b.Length >= VfioUapi.InfoSize ? VfioUapi.Get32(b, 16) : 0;
        var caps = new List<VfioInfoCapability>();
        ulong? migPg = null, maxBm = null; uint? avail = null;
        var ranges = new List<(ulong, ulong)>();
        var off = (int)capOff;
        while ((flags & VfioUapi.InfoCaps) != 0 && off != 0 && off + 8 <= b.Length && caps.Count < 16)
        {
            var id = BitConverter.ToUInt16(b[off..]);
            var ver = BitConverter.ToUInt16(b[(off + 2)..]);
            var next = (int)VfioUapi.Get32(b, off + 4);
            caps.Add(new(id, ver, off, next));
            if (id == VfioUapi.CapMigration) { migPg = VfioUapi.Get64(b, off + 16); maxBm = VfioUapi.Get64(b, off + 24); }
            else if (id == VfioUapi.CapDmaAvail) avail = VfioUapi.Get32(b, off + 8);
            else if (id == VfioUapi.CapIovaRange)
            {
                var n = VfioUapi.Get32(b, off + 8);
                for (var i = 0; i < n && off + 16 + 16 * i + 16 <= b.Length; i++)
                    ranges.Add((VfioUapi.Get64(b, off + 16 + 16 * i), VfioUapi.Get64(b, off + 24 + 16 * i)));
            }
            off = next;
        }
        return new(argsz, flags, pgsizes, capOff, caps, migPg, maxBm, avail, ranges);
    }
}
