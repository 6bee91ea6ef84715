using VirtLab.Plugins.Vfio.Uapi;
using static VirtLab.Plugins.Vfio.Type1.ErrnoExt;
using U = VirtLab.Plugins.Vfio.Uapi.VfioUapi;

namespace VirtLab.Plugins.Vfio.Type1;

public sealed unsafe partial class VfioContainer
{
    /// <summary>
    /// ioctl(container_fd, <paramref name="request"/>, <paramref name="arg"/>): <paramref name="arg"/> is the integer
    /// argument (API version, extension, IOMMU type) or, for struct ioctls, a user address in <see cref="User"/> memory.
    /// Returns what the syscall returns: a non-negative result or a negative errno. Never throws for any input.
    /// </summary>
    public long Ioctl(uint request, ulong arg)
    {
        if (request == U.GetApiVersion) return U.ApiVersion;
        if (request == U.CheckExtension) return CheckExtension(arg > uint.MaxValue ? 0 : (uint)arg);
        if (request == U.SetIommu) return SetIommuCore(arg).Ret;
        var len = User.Resolve(arg, out var p);
        return Ioctl(request, new Span<byte>(p, (int)Math.Min(len, int.MaxValue)), arg);
    }

    /// <summary>
    /// ioctl with the struct in <paramref name="arg"/>: the bytes QEMU would have in memory at the pointer it passes
    /// (argsz, flags, payload). Reads past the span fault (-EFAULT) as an unmapped page would; results are written
    /// back into the span and nowhere else. Pointers inside the struct (a bitmap's data) refer to <see cref="User"/> memory.
    /// </summary>
    public long Ioctl(uint request, Span<byte> arg)
    {
        fixed (byte* p = arg) return Ioctl(request, arg, (ulong)p);
    }

    /// <summary>The last failure's reason, per thread (for messages next to an errno).</summary>
    [ThreadStatic] static string? lastWhy;

    /// <summary>Why the last <see cref="Ioctl(uint, Span{byte})"/> on this thread failed, in words.</summary>
    public static string? LastError => lastWhy;

    long Ioctl(uint request, Span<byte> arg, ulong address)
    {
        KResult r;
        try
        {
            r = Dispatch(request, arg, address);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // a model bug must not look like a kernel result: report it loudly
            throw new InvalidOperationException($"{U.IoctlName(request)}: the VFIO model failed internally: {e.Message}", e);
        }
        lastWhy = r.Why;
        return r.Ret;
    }

    KResult Dispatch(uint request, Span<byte> arg, ulong address)
    {
        if (request == U.GetApiVersion) return new(U.ApiVersion);
        if (request == U.CheckExtension) return new(CheckExtension((uint)address));
        if (request == U.SetIommu) return SetIommuCore(address);
        bool set;
        lock (gate) set = driverSet;
        if (!set) return KResult.Err(EINVAL, $"{U.IoctlName(request)}: the container has no IOMMU yet (VFIO_SET_IOMMU first)");
        if (request == U.IommuGetInfo) return GetInfo(arg);
        if (request == U.IommuMapDma) return MapDmaIoctl(arg);
        if (request == U.IommuUnmapDma) return UnmapDmaIoctl(arg);
        if (request == U.IommuDirtyPages) return DirtyPagesIoctl(arg);
        return KResult.Err(ENOTTY, $"{U.IoctlName(request)} is not a type1 IOMMU ioctl");
    }

    /// <summary>x86-64 access_ok(): the range lies below TASK_SIZE_MAX without wrapping.</summary>
    static bool AccessOk(ulong addr, ulong size)
    {
        var sum = addr + size;
        return sum >= addr && sum <= U.TaskSizeMax;
    }

    BitmapTarget ResolveBitmap(ulong data)
    {
        var n = User.Resolve(data, out var p);
        return new BitmapTarget(p, n);
    }

    static KResult Fault(string what, int need, int have) => KResult.Err(EFAULT, $"{what}: copy_from_user of {need} bytes from a {have}-byte buffer");

    // ---- VFIO_IOMMU_GET_INFO (vfio_iommu_type1_get_info) ----

    KResult GetInfo(Span<byte> arg)
    {
        if (arg.Length < U.InfoMinSize) return Fault("VFIO_IOMMU_GET_INFO", U.InfoMinSize, arg.Length);
        var argsz = U.Get32(arg, 0);
        if (argsz < U.InfoMinSize) return KResult.Err(EINVAL, $"argsz {argsz} is less than {U.InfoMinSize} (offsetofend iova_pgsizes)");
        var minsz = (int)Math.Min(argsz, U.InfoSize);

        Span<byte> info = stackalloc byte[U.InfoSize];
        info.Clear();
        arg[..U.InfoMinSize].CopyTo(info);
        byte[] caps;
        lock (gate)
        {
            U.Put32(info, 4, U.InfoPgsizes);
            U.Put64(info, 8, pgsizeBitmap);
            caps = BuildCaps();
        }
        if (caps.Length > 0)
        {
            U.Put32(info, 4, U.Get32(info, 4) | U.InfoCaps);
            if (argsz < U.InfoSize + caps.Length)
                U.Put32(info, 0, (uint)(U.InfoSize + caps.Length));   // tell the caller how much room the chain needs
            else
            {
                // vfio_info_cap_shift: the chain's next offsets become offsets from the start of the info struct
                for (var off = 0; ;)
                {
                    var next = (int)U.Get32(caps, off + 4);
                    if (next == 0) break;
                    U.Put32(caps, off + 4, (uint)(next + U.InfoSize));
                    off = next;
                }
                if (arg.Length < U.InfoSize + caps.Length)
                    return KResult.Err(EFAULT, $"VFIO_IOMMU_GET_INFO: argsz {argsz} claims room for the capability chain but the buffer has {arg.Length} bytes");
                caps.CopyTo(arg[U.InfoSize..]);
                U.Put32(info, 16, U.InfoSize);
            }
        }
        if (arg.Length < minsz) return KResult.Err(EFAULT, $"VFIO_IOMMU_GET_INFO: copy_to_user of {minsz} bytes into a {arg.Length}-byte buffer");
        info[..minsz].CopyTo(arg);
        return KResult.Ok;
    }

    /// <summary>The capability chain: migration, DMA available, then the valid IOVA ranges when a domain exists; each 8-byte aligned, next = offset in the chain.</summary>
    byte[] BuildCaps()
    {
        var ranges = iovaList.Count;
        var iovaCap = ranges == 0 ? 0 : 16 + 16 * ranges;
        var chain = new byte[U.CapMigrationSize + 16 + iovaCap];
        // migration: header {id 2, version 1, next}, flags 0, pgsize_bitmap (smallest only), max_dirty_bitmap_size
        BitConverter.TryWriteBytes(chain.AsSpan(0), U.CapMigration);
        BitConverter.TryWriteBytes(chain.AsSpan(2), (ushort)1);
        U.Put32(chain, 4, U.CapMigrationSize);
        U.Put64(chain, 16, 1UL << Bits.Ffs(pgsizeBitmap));
        U.Put64(chain, 24, U.DirtyBitmapSizeMax);
        // dma_avail: header {id 3, version 1}, avail
        var o = U.CapMigrationSize;
        BitConverter.TryWriteBytes(chain.AsSpan(o), U.CapDmaAvail);
        BitConverter.TryWriteBytes(chain.AsSpan(o + 2), (ushort)1);
        U.Put32(chain, o + 8, (uint)dmaAvail);
        if (ranges > 0)
        {
            U.Put32(chain, o + 4, (uint)(o + 16));
            o += 16;
            BitConverter.TryWriteBytes(chain.AsSpan(o), U.CapIovaRange);
            BitConverter.TryWriteBytes(chain.AsSpan(o + 2), (ushort)1);
            U.Put32(chain, o + 8, (uint)ranges);
            for (var i = 0; i < ranges; i++)
            {
                U.Put64(chain, o + 16 + 16 * i, iovaList[i].Start);
                U.Put64(chain, o + 24 + 16 * i, iovaList[i].End);
            }
        }
        return chain;
    }

    // ---- VFIO_IOMMU_MAP_DMA (vfio_iommu_type1_map_dma) ----

    KResult MapDmaIoctl(Span<byte> arg)
    {
        if (arg.Length < U.DmaMapSize) return Fault("VFIO_IOMMU_MAP_DMA", U.DmaMapSize, arg.Length);
        var argsz = U.Get32(arg, 0);
        var flags = U.Get32(arg, 4);
        if (argsz < U.DmaMapSize) return KResult.Err(EINVAL, $"argsz {argsz} is less than {U.DmaMapSize}");
        return MapCore(flags, U.Get64(arg, 8), U.Get64(arg, 16), U.Get64(arg, 24));
    }

    // ---- VFIO_IOMMU_UNMAP_DMA (vfio_iommu_type1_unmap_dma) ----

    KResult UnmapDmaIoctl(Span<byte> arg)
    {
        const int minsz = U.DmaUnmapSize;
        if (arg.Length < minsz) return Fault("VFIO_IOMMU_UNMAP_DMA", minsz, arg.Length);
        var argsz = U.Get32(arg, 0);
        var flags = U.Get32(arg, 4);
        var iova = U.Get64(arg, 8);
        var size = U.Get64(arg, 16);
        const uint mask = U.DmaUnmapFlagGetDirtyBitmap | U.DmaUnmapFlagVaddr | U.DmaUnmapFlagAll;
        if (argsz < minsz || (flags & ~mask) != 0)
            return KResult.Err(EINVAL, argsz < minsz ? $"argsz {argsz} is less than {minsz}" : $"flags 0x{flags:x}: only GET_DIRTY_BITMAP (1), ALL (2) and VADDR (4) are defined");
        if ((flags & U.DmaUnmapFlagGetDirtyBitmap) != 0 && (flags & (U.DmaUnmapFlagAll | U.DmaUnmapFlagVaddr)) != 0)
            return KResult.Err(EINVAL, "GET_DIRTY_BITMAP cannot be combined with ALL or VADDR");

        VfioBitmap bitmap = default;
        BitmapTarget target = default;
        if ((flags & U.DmaUnmapFlagGetDirtyBitmap) != 0)
        {
            if (argsz < minsz + U.BitmapSize) return KResult.Err(EINVAL, $"argsz {argsz} leaves no room for a struct vfio_bitmap ({minsz + U.BitmapSize} needed)");
            if (arg.Length < minsz + U.BitmapSize) return Fault("VFIO_IOMMU_UNMAP_DMA", minsz + U.BitmapSize, arg.Length);
            bitmap = VfioBitmap.ReadFrom(arg[minsz..]);
            if (!AccessOk(bitmap.Data, bitmap.Size))
                return KResult.Err(EINVAL, $"bitmap [0x{bitmap.Data:x}, +0x{bitmap.Size:x}) is not a user address range (access_ok)");
            var vr = VerifyBitmapSize(size >> Bits.Ffs(bitmap.PgSize), bitmap.Size);
            if (vr.Failed) return vr;
            target = ResolveBitmap(bitmap.Data);
        }
        var r = UnmapCore(flags, iova, size, bitmap, target, out var unmapped);
        if (r.Failed) return r;
        // copy_to_user(arg, &unmap, minsz): argsz, flags, iova as read; size = bytes unmapped
        U.Put64(arg, 16, unmapped);
        return KResult.Ok;
    }

    // ---- VFIO_IOMMU_DIRTY_PAGES (vfio_iommu_type1_dirty_pages) ----

    KResult DirtyPagesIoctl(Span<byte> arg)
    {
        lock (gate)
            if (!v2) return KResult.Err(EACCES, "VFIO_IOMMU_DIRTY_PAGES needs a type1 v2 container (VFIO_TYPE1v2_IOMMU)");
        const int minsz = U.DirtyBitmapSize;
        if (arg.Length < minsz) return Fault("VFIO_IOMMU_DIRTY_PAGES", minsz, arg.Length);
        var argsz = U.Get32(arg, 0);
        var flags = U.Get32(arg, 4);
        const uint mask = U.DirtyPagesFlagStart | U.DirtyPagesFlagStop | U.DirtyPagesFlagGetBitmap;
        if (argsz < minsz || (flags & ~mask) != 0)
            return KResult.Err(EINVAL, argsz < minsz ? $"argsz {argsz} is less than {minsz}" : $"flags 0x{flags:x}: only START (1), STOP (2) and GET_BITMAP (4) are defined");
        if (flags == 0 || (flags & (flags - 1)) != 0)
            return KResult.Err(EINVAL, $"flags 0x{flags:x}: exactly one of START, STOP, GET_BITMAP per call");
        if (flags == U.DirtyPagesFlagStart) return DirtyStartCore();
        if (flags == U.DirtyPagesFlagStop) return DirtyStopCore();

        var dataSize = argsz - (uint)minsz;
        if (dataSize == 0 || dataSize < U.DirtyBitmapGetSize)
            return KResult.Err(EINVAL, $"argsz {argsz} leaves {dataSize} bytes for struct vfio_iommu_type1_dirty_bitmap_get ({U.DirtyBitmapGetSize} needed)");
        if (arg.Length < minsz + U.DirtyBitmapGetSize) return Fault("VFIO_IOMMU_DIRTY_PAGES", minsz + U.DirtyBitmapGetSize, arg.Length);
        var iova = U.Get64(arg, 8);
        var size = U.Get64(arg, 16);
        var bitmap = VfioBitmap.ReadFrom(arg[24..]);
        return DirtyGetCore(iova, size, bitmap, ResolveBitmap(bitmap.Data), AccessOk(bitmap.Data, bitmap.Size));
    }
}
