using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using VirtLab.Plugins.Vfio.Tracking;
using VirtLab.Plugins.Vfio.Uapi;
using VirtLab.Sdk.Machine;
using static VirtLab.Plugins.Vfio.Type1.ErrnoExt;

namespace VirtLab.Plugins.Vfio.Type1;

/// <summary>
/// A VFIO container (/dev/vfio/vfio) and, once VFIO_SET_IOMMU picked it, the type1 IOMMU behind it (struct
/// vfio_iommu): its vfio_dma list, IOMMU domains, valid IOVA ranges, pinned pages and dirty tracking. Every rule is
/// the one of drivers/vfio/vfio_iommu_type1.c and container.c, checked in the kernel's order with the kernel's errno.
/// Two doors: typed methods (throw <see cref="VfioException"/>) and <see cref="Ioctl(uint, Span{byte})"/> (returns the
/// result or a negative errno). One lock (iommu-&gt;lock) serialises ioctls and device calls from any thread.
/// </summary>
public sealed unsafe partial class VfioContainer : IDisposable
{
    readonly object gate = new();
    readonly List<VfioGroup> groups = [];            // container->group_list
    readonly List<VfioGroup> emulatedGroups = [];    // iommu->emulated_iommu_groups
    readonly List<Domain> domains = [];              // iommu->domain_list
    readonly List<VfioDma> dmas = [];                // iommu->dma_list, sorted by iova
    readonly List<IVfioDevice> devices = [];         // iommu->device_list (devices with dma_unmap)
    readonly List<IDirtyTracker> trackers = [];
    List<(ulong Start, ulong End)> iovaList = [];    // iommu->iova_list (inclusive ends)
    bool driverSet;
    bool v2;
    int dmaAvail;
    int vaddrInvalidCount;
    ulong pgsizeBitmap;
    int numNonPinnedGroups;
    bool dirtyPageTracking;

    sealed class Domain(IommuGeometry geometry)
    {
        public readonly IommuGeometry Geometry = geometry;
        public readonly List<VfioGroup> Groups = [];
    }

    /// <summary>A container whose user memory is <paramref name="vm"/>'s guest RAM plus buffers allocated from <see cref="User"/>.</summary>
    public VfioContainer(Vm? vm = null, int dmaEntryLimit = VfioUapi.DmaEntryLimit)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(dmaEntryLimit);
        Vm = vm;
        User = new UserMemory(vm);
        DmaEntryLimit = dmaEntryLimit;
    }

    public Vm? Vm { get; }

    /// <summary>The owning process's user memory: guest RAM and allocated buffers (what pointers in ioctl structs refer to).</summary>
    public UserMemory User { get; }

    /// <summary>The dma_entry_limit module parameter this container was opened with.</summary>
    public int DmaEntryLimit { get; }

    // ---- state, read under the lock ----

    public bool IommuSet { get { lock (gate) return driverSet; } }
    public bool IsV2 { get { lock (gate) return v2; } }
    public bool DirtyTracking { get { lock (gate) return dirtyPageTracking; } }
    public ulong PgSizeBitmap { get { lock (gate) return pgsizeBitmap; } }

    /// <summary>The smallest IOMMU page size: the only bitmap page size GET_BITMAP accepts.</summary>
    public ulong MinPageSize { get { lock (gate) return 1UL << Bits.Ffs(pgsizeBitmap); } }

    /// <summary>iommu->num_non_pinned_groups: groups that can dirty memory unseen; while nonzero every iommu-mapped page reports dirty.</summary>
    public int NonPinnedGroups { get { lock (gate) return numNonPinnedGroups; } }
    public int DmaAvail { get { lock (gate) return dmaAvail; } }
    public IReadOnlyList<VfioDma> Dmas { get { lock (gate) return dmas.ToArray(); } }
    public IReadOnlyList<VfioGroup> Groups { get { lock (gate) return groups.ToArray(); } }
    public IReadOnlyList<(ulong Start, ulong End)> IovaRanges { get { lock (gate) return iovaList.ToArray(); } }
    public IReadOnlyList<IDirtyTracker> Trackers { get { lock (gate) return trackers.ToArray(); } }

    /// <summary>
    /// false (the kernel): after a report that shifted a vfio_dma's bitmap (the dma does not start a 64-bit word of the
    /// user bitmap), bitmap_clear(map, 0, nbits) leaves the shifted copy of its last <c>shift</c> pages at bits
    /// [nbits, nbits+shift); later reports carry them past the dma's end, into holes or the next dma (over-reporting,
    /// never losing a page). true: clear the whole shifted range (bitmap_clear(map, 0, nbits + shift)).
    /// </summary>
    public bool ClearShiftedTail { get; set; }

    /// <summary>Bytes of all per-vfio_dma dirty bitmaps now.</summary>
    public long BitmapBytes { get { lock (gate) return dmas.Sum(d => d.BitmapBytes); } }

    // ---- groups (VFIO_GROUP_SET_CONTAINER / UNSET_CONTAINER) ----

    /// <summary>VFIO_GROUP_SET_CONTAINER: adds <paramref name="group"/>; if the IOMMU is already set the group is attached to it.</summary>
    public void AddGroup(VfioGroup group) => VfioException.Check("VFIO_GROUP_SET_CONTAINER", AddGroupCore(group));

    internal KResult AddGroupCore(VfioGroup group)
    {
        ArgumentNullException.ThrowIfNull(group);
        lock (gate)
        {
            if (group.Container is not null) return KResult.Err(EINVAL, $"group {group.Name} is already set to a container");
            if (driverSet)
            {
                var r = AttachGroup(group);
                if (r.Failed) return r;
            }
            group.Container = this;
            groups.Add(group);
            return KResult.Ok;
        }
    }

    /// <summary>VFIO_GROUP_UNSET_CONTAINER: detaches the group; removing the last group releases the IOMMU (all mappings go).</summary>
    public void RemoveGroup(VfioGroup group)
    {
        lock (gate)
        {
            if (group.Container != this) throw new VfioException("VFIO_GROUP_UNSET_CONTAINER", EINVAL, $"group {group.Name} is not set to this container");
            if (driverSet) DetachGroup(group);
            groups.Remove(group);
            group.Container = null;
            if (groups.Count == 0 && driverSet) ReleaseIommu();
        }
    }

    /// <summary>Registers a device for dma_unmap notifications (vfio_register_emulated_iommu_dev).</summary>
    public void RegisterDevice(IVfioDevice device)
    {
        lock (gate)
        {
            if (device.Group.Container != this)
                throw new InvalidOperationException($"device's group {device.Group.Name} is not set to this container");
            if (!devices.Contains(device)) devices.Add(device);
        }
    }

    public void UnregisterDevice(IVfioDevice device)
    {
        lock (gate) devices.Remove(device);
    }

    // ---- trackers ----

    /// <summary>Attaches a dirty-tracking strategy: from now on it gets the same events as type1's own bitmaps.</summary>
    public T Track<T>(T tracker) where T : IDirtyTracker
    {
        lock (gate)
        {
            if (!trackers.Contains(tracker))
            {
                trackers.Add(tracker);
                foreach (var d in dmas) tracker.OnMap(d.Iova, d.Size);
            }
        }
        return tracker;
    }

    public void Untrack(IDirtyTracker tracker)
    {
        lock (gate) trackers.Remove(tracker);
    }

    // ---- VFIO_CHECK_EXTENSION / VFIO_SET_IOMMU ----

    /// <summary>VFIO_CHECK_EXTENSION: 1 when supported, 0 when not (before SET_IOMMU every driver is asked; after, the chosen one).</summary>
    public long CheckExtension(uint extension)
    {
        lock (gate) return driverSet ? Type1CheckExtension(extension, true) : Type1CheckExtension(extension, false);
    }

    long Type1CheckExtension(ulong arg, bool withIommu) => arg switch
    {
        VfioUapi.Type1Iommu or VfioUapi.Type1v2Iommu or VfioUapi.UnmapAll => 1,
        VfioUapi.UpdateVaddr => withIommu && emulatedGroups.Count == 0 ? 1 : 0,
        VfioUapi.DmaCcIommu => withIommu && domains.Count > 0 ? 1 : 0, // every modelled domain enforces coherency
        _ => 0,
    };

    /// <summary>VFIO_SET_IOMMU with VFIO_TYPE1v2_IOMMU (or <paramref name="type"/>): opens type1 and attaches every group.</summary>
    public void SetIommu(uint type = VfioUapi.Type1v2Iommu) => VfioException.Check("VFIO_SET_IOMMU", SetIommuCore(type));

    internal KResult SetIommuCore(ulong type)
    {
        lock (gate)
        {
            if (groups.Count == 0 || driverSet)
                return KResult.Err(EINVAL, driverSet ? "the container's IOMMU is already set" : "no group is set to this container (VFIO_GROUP_SET_CONTAINER first)");
            // type1 is the only driver registered: it must claim the extension, then open with it
            if (Type1CheckExtension(type, false) <= 0 || type == VfioUapi.UnmapAll)
                return KResult.Err(ENODEV, $"no IOMMU driver supports type {type} (type1 supports {VfioUapi.Type1Iommu} and {VfioUapi.Type1v2Iommu})");
            OpenIommu(type == VfioUapi.Type1v2Iommu);
            foreach (var g in groups)
            {
                var r = AttachGroup(g);
                if (r.Failed)
                {
                    foreach (var a in groups) if (a.Attached) DetachGroup(a);
                    ReleaseIommu();
                    return r;
                }
            }
            return KResult.Ok;
        }
    }

    void OpenIommu(bool isV2)
    {
        driverSet = true;
        v2 = isV2;
        dmaAvail = DmaEntryLimit;
        pgsizeBitmap = VfioUapi.PageMask;
        iovaList = [];
        numNonPinnedGroups = 0;
        dirtyPageTracking = false;
        vaddrInvalidCount = 0;
    }

    void ReleaseIommu()
    {
        while (dmas.Count > 0) RemoveDma(dmas[0]);
        emulatedGroups.Clear();
        domains.Clear();
        iovaList = [];
        driverSet = false;
        v2 = false;
        dirtyPageTracking = false;
        foreach (var t in trackers) if (t.Running) t.Stop();
    }

    // ---- attach / detach (vfio_iommu_type1_attach_group / detach_group) ----

    KResult AttachGroup(VfioGroup group)
    {
        if (vaddrInvalidCount > 0) return KResult.Err(EBUSY, "vaddrs are invalidated (UNMAP_DMA with FLAG_VADDR); attaching could need pinning");
        if (group.Attached) return KResult.Err(EINVAL, $"group {group.Name} is already attached");
        if (group.Kind == VfioGroupKind.Emulated)
        {
            emulatedGroups.Add(group);
            group.PinnedPageDirtyScope = true;   // it cannot dirty memory but through pinning or vfio_dma_rw
            group.Attached = true;
            return KResult.Ok;
        }

        var geo = group.Geometry!;
        if (ApertureConflict(geo.ApertureStart, geo.ApertureEnd))
            return KResult.Err(EINVAL, $"the IOMMU aperture [0x{geo.ApertureStart:x}, 0x{geo.ApertureEnd:x}] conflicts with the valid IOVA ranges or existing mappings");
        foreach (var (s, l) in geo.Reserved)
            if (FindDma(s, l) is { } d)
                return KResult.Err(EINVAL, $"reserved region [0x{s:x}, 0x{s + l:x}) overlaps {d}");

        var domain = domains.FirstOrDefault(d => d.Geometry.PgSizeBitmap == geo.PgSizeBitmap && d.Geometry.ApertureEnd == geo.ApertureEnd);
        if (domain is null)
        {
            // replay: pin and map every existing vfio_dma into the new domain
            foreach (var d in dmas)
                if (!d.IommuMapped && PinRange(d.Vaddr, d.Size) is { } why)
                    return KResult.Err(EFAULT, $"replaying {d} into the new domain: {why}");
            foreach (var d in dmas) d.IommuMapped = true;
            domain = new Domain(geo);
            domains.Add(domain);
            UpdatePgSizeBitmap();
        }
        domain.Groups.Add(group);
        RebuildIovaList();
        group.PinnedPageDirtyScope = false;
        group.Attached = true;
        numNonPinnedGroups++;   // it can dirty memory directly until it declares itself through pinning
        return KResult.Ok;
    }

    void DetachGroup(VfioGroup group)
    {
        var updateDirtyScope = !group.PinnedPageDirtyScope;
        if (group.Kind == VfioGroupKind.Emulated)
        {
            emulatedGroups.Remove(group);
            if (emulatedGroups.Count == 0 && domains.Count == 0) while (dmas.Count > 0) RemoveDma(dmas[0]);
        }
        else
        {
            var domain = domains.First(d => d.Groups.Contains(group));
            domain.Groups.Remove(group);
            if (domain.Groups.Count == 0)
            {
                if (domains.Count == 1)
                {
                    if (emulatedGroups.Count == 0) while (dmas.Count > 0) RemoveDma(dmas[0]);
                    else foreach (var d in dmas) d.IommuMapped = false;   // unmap_unpin_reaccount: pins of mdevs stay
                }
                domains.Remove(domain);
                UpdatePgSizeBitmap();
            }
            RebuildIovaList();
        }
        group.Attached = false;
        group.PinnedPageDirtyScope = false;
        if (updateDirtyScope)
        {
            numNonPinnedGroups--;
            if (dirtyPageTracking) foreach (var d in dmas) Bits.Set(d.Bitmap!.Pointer, 0, d.Size >> Bits.Ffs(pgsizeBitmap));
        }
    }

    bool ApertureConflict(ulong start, ulong end)
    {
        if (iovaList.Count == 0) return false;
        if (start > iovaList[^1].End || end < iovaList[0].Start) return true;
        if (start > iovaList[0].Start && FindDma(iovaList[0].Start, start - iovaList[0].Start) is not null) return true;
        if (end < iovaList[^1].End && FindDma(end + 1, iovaList[^1].End - end) is not null) return true;
        return false;
    }

    void UpdatePgSizeBitmap()
    {
        var bm = ulong.MaxValue;
        foreach (var d in domains) bm &= d.Geometry.PgSizeBitmap;
        if (domains.Count == 0) bm = VfioUapi.PageMask;
        if ((bm & ~VfioUapi.PageMask) != 0) bm = (bm & VfioUapi.PageMask) | 4096;   // hide sub-PAGE_SIZE sizes
        pgsizeBitmap = bm;
    }

    /// <summary>The intersection of every domain's aperture minus every reserved region (inclusive ends).</summary>
    void RebuildIovaList()
    {
        if (domains.Count == 0) { iovaList = []; return; }
        ulong lo = 0, hi = ulong.MaxValue;
        foreach (var d in domains) { lo = Math.Max(lo, d.Geometry.ApertureStart); hi = Math.Min(hi, d.Geometry.ApertureEnd); }
        var list = new List<(ulong Start, ulong End)> { (lo, hi) };
        foreach (var d in domains)
            foreach (var (rs, rl) in d.Geometry.Reserved)
            {
                var re = rs + rl - 1;
                var next = new List<(ulong, ulong)>();
                foreach (var (s, e) in list)
                {
                    if (rs > e || re < s) { next.Add((s, e)); continue; }
                    if (rs > s) next.Add((s, rs - 1));
                    if (re < e) next.Add((re + 1, e));
                }
                list = next;
            }
        iovaList = list;
    }

    bool IovaDmaValid(ulong start, ulong end)
    {
        foreach (var (s, e) in iovaList) if (start >= s && end <= e) return true;
        return iovaList.Count == 0;   // a container of mdevs only has no aperture
    }

    // ---- the vfio_dma list ----

    /// <summary>vfio_find_dma(start, size): a mapping overlapping [start, start+size); with size 0, one strictly containing start.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal VfioDma? FindDma(ulong start, ulong size)
    {
        var i = FirstEndingAfter(start);
        if (i < dmas.Count && dmas[i].Iova < (UInt128)start + size && !(size == 0 && dmas[i].Iova == start)) return dmas[i];
        return null;
    }

    /// <summary>Index of the first dma whose end lies above <paramref name="start"/> (vfio_find_dma_first_node's search).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    int FirstEndingAfter(ulong start)
    {
        int lo = 0, hi = dmas.Count;
        while (lo < hi)
        {
            var mid = (lo + hi) >>> 1;
            if (dmas[mid].End > start) hi = mid; else lo = mid + 1;
        }
        return lo;
    }

    void LinkDma(VfioDma dma)
    {
        var i = FirstEndingAfter(dma.Iova);
        dmas.Insert(i, dma);
    }

    void RemoveDma(VfioDma dma)
    {
        dmas.Remove(dma);
        dma.Pfns.Clear();
        dma.IommuMapped = false;
        dma.Bitmap?.Dispose();
        dma.Bitmap = null;
        if (dma.VaddrInvalid) vaddrInvalidCount--;
        dmaAvail++;
        OnDmaUnlinked(dma);
        foreach (var t in trackers) t.OnUnmap(dma.Iova, dma.Size);
    }

    /// <summary>Pins [vaddr, +size) (vfio_pin_pages_remote): every page must be user memory backed by guest RAM. Returns why not, or null.</summary>
    string? PinRange(ulong vaddr, ulong size)
    {
        var done = 0UL;
        while (done < size)
        {
            var extent = User.GuestRamExtent(vaddr + done);
            if (extent == 0) return $"vaddr 0x{vaddr + done:x} is not mapped guest RAM of this process (get_user_pages fails)";
            done += Math.Min(extent, size - done);
        }
        return null;
    }

    // ---- MAP_DMA (vfio_dma_do_map) ----

    /// <summary>VFIO_IOMMU_MAP_DMA: maps [iova, +size) to user memory at <paramref name="vaddr"/>.</summary>
    public VfioDma MapDma(ulong iova, ulong vaddr, ulong size, DmaProt prot = DmaProt.ReadWrite)
    {
        VfioException.Check("VFIO_IOMMU_MAP_DMA", MapCore((uint)prot, vaddr, iova, size));
        lock (gate) return FindDma(iova, 1)!;
    }

    /// <summary>Maps [iova, +size) onto the guest RAM at <paramref name="gpa"/> (QEMU's vaddr: the host address of that RAM).</summary>
    public VfioDma MapGuestRam(ulong iova, ulong gpa, ulong size, DmaProt prot = DmaProt.ReadWrite) => MapDma(iova, User.VaddrOf(gpa), size, prot);

    internal KResult MapCore(uint flags, ulong vaddr, ulong iova, ulong size)
    {
        lock (gate)
        {
            if (!driverSet) return KResult.Err(EINVAL, "the container has no IOMMU yet (VFIO_SET_IOMMU first)");
            if ((flags & ~(VfioUapi.DmaMapFlagRead | VfioUapi.DmaMapFlagWrite | VfioUapi.DmaMapFlagVaddr)) != 0)
                return KResult.Err(EINVAL, $"flags 0x{flags:x}: only READ (1), WRITE (2) and VADDR (4) are defined");
            var setVaddr = (flags & VfioUapi.DmaMapFlagVaddr) != 0;
            var prot = (DmaProt)(flags & 3);
            if (prot != 0 && setVaddr) return KResult.Err(EINVAL, "FLAG_VADDR updates a vaddr and takes no READ/WRITE");
            if (prot == 0 && !setVaddr) return KResult.Err(EINVAL, "a mapping needs READ and/or WRITE");

            var pgsize = 1UL << Bits.Ffs(pgsizeBitmap);
            if (size == 0) return KResult.Err(EINVAL, "size is 0");
            if (((size | iova | vaddr) & (pgsize - 1)) != 0)
                return KResult.Err(EINVAL, $"iova 0x{iova:x}, vaddr 0x{vaddr:x} and size 0x{size:x} must be multiples of the smallest IOMMU page (0x{pgsize:x})");
            if (iova + size - 1 < iova || vaddr + size - 1 < vaddr)
                return KResult.Err(EINVAL, $"[0x{iova:x}, +0x{size:x}) or its vaddr range wraps past 2^64");

            var dma = FindDma(iova, size);
            if (setVaddr)
            {
                if (dma is null) return KResult.Err(ENOENT, $"no mapping at iova 0x{iova:x} to update the vaddr of");
                if (!dma.VaddrInvalid || dma.Iova != iova || dma.Size != size)
                    return KResult.Err(EINVAL, $"FLAG_VADDR needs exactly an invalidated mapping's iova and size; found {dma}");
                dma.Vaddr = vaddr;
                dma.VaddrInvalid = false;
                vaddrInvalidCount--;
                OnDmaLinked(dma);
                return KResult.Ok;
            }
            if (dma is not null) return KResult.Err(EEXIST, $"[0x{iova:x}, +0x{size:x}) overlaps {dma}");
            if (dmaAvail == 0) return KResult.Err(ENOSPC, $"the container already has dma_entry_limit ({DmaEntryLimit}) mappings");
            if (!IovaDmaValid(iova, iova + size - 1))
                return KResult.Err(EINVAL, $"[0x{iova:x}, 0x{iova + size - 1:x}] is outside the valid IOVA ranges {FormatRanges()}");

            dma = new VfioDma(iova, vaddr, size, prot);
            dmaAvail--;
            LinkDma(dma);
            if (domains.Count > 0)
            {
                if (PinRange(vaddr, size) is { } why)
                {
                    RemoveDma(dma);
                    return KResult.Err(EFAULT, why);
                }
                dma.IommuMapped = true;
            }
            if (dirtyPageTracking)
            {
                var r = AllocBitmap(dma, pgsize);
                if (r.Failed) { RemoveDma(dma); return r; }
            }
            OnDmaLinked(dma);
            foreach (var t in trackers) t.OnMap(iova, size);
            return KResult.Ok;
        }
    }

    string FormatRanges() => iovaList.Count == 0 ? "(any)" : string.Join(", ", iovaList.Select(r => $"[0x{r.Start:x}, 0x{r.End:x}]"));

    static KResult AllocBitmap(VfioDma dma, ulong pgsize)
    {
        var npages = dma.Size / pgsize;
        if (npages > VfioUapi.DirtyBitmapPagesMax)
            return KResult.Err(EINVAL, $"{dma} has {npages} pages; a dirty bitmap holds at most DIRTY_BITMAP_PAGES_MAX = {VfioUapi.DirtyBitmapPagesMax}");
        dma.Bitmap = new WordBuffer((long)(VfioUapi.DirtyBitmapBytes(npages) / 8) + 1);
        return KResult.Ok;
    }

    // ---- UNMAP_DMA (vfio_dma_do_unmap) ----

    /// <summary>VFIO_IOMMU_UNMAP_DMA of [iova, +size) (a range may hold several mappings but not cut one). Returns the bytes unmapped.</summary>
    public ulong UnmapDma(ulong iova, ulong size)
    {
        var r = UnmapCore(0, iova, size, default, default, out var unmapped);
        VfioException.Check("VFIO_IOMMU_UNMAP_DMA", r);
        return unmapped;
    }

    /// <summary>VFIO_DMA_UNMAP_FLAG_ALL: unmaps everything. Returns the bytes unmapped.</summary>
    public ulong UnmapAll()
    {
        var r = UnmapCore(VfioUapi.DmaUnmapFlagAll, 0, 0, default, default, out var unmapped);
        VfioException.Check("VFIO_IOMMU_UNMAP_DMA", r);
        return unmapped;
    }

    /// <summary>VFIO_DMA_UNMAP_FLAG_GET_DIRTY_BITMAP: unmaps [iova, +size) and returns the dirty bitmap of the range.</summary>
    public DirtyBitmap UnmapDmaGetDirtyBitmap(ulong iova, ulong size)
    {
        var pages = (long)(size / 4096);
        var bm = new DirtyBitmap(pages);
        fixed (ulong* w = bm.Words)
        {
            var target = new BitmapTarget((byte*)w, (ulong)bm.SizeInBytes);
            var r = UnmapCore(VfioUapi.DmaUnmapFlagGetDirtyBitmap, iova, size, new VfioBitmap(4096, (ulong)bm.SizeInBytes, 0), target, out _);
            VfioException.Check("VFIO_IOMMU_UNMAP_DMA", r);
        }
        return bm;
    }

    internal KResult UnmapCore(uint flags, ulong iova, ulong size, VfioBitmap bitmap, BitmapTarget target, out ulong unmapped)
    {
        unmapped = 0;
        lock (gate)
        {
            if (!driverSet) return KResult.Err(EINVAL, "the container has no IOMMU yet (VFIO_SET_IOMMU first)");
            var unmapAll = (flags & VfioUapi.DmaUnmapFlagAll) != 0;
            var invalidateVaddr = (flags & VfioUapi.DmaUnmapFlagVaddr) != 0;
            var getBitmap = (flags & VfioUapi.DmaUnmapFlagGetDirtyBitmap) != 0;
            if (invalidateVaddr && emulatedGroups.Count > 0)
                return KResult.Err(EBUSY, "FLAG_VADDR is not allowed while mediated devices are attached");
            var pgshift = Bits.Ffs(pgsizeBitmap);
            var pgsize = 1UL << pgshift;
            if ((iova & (pgsize - 1)) != 0) return KResult.Err(EINVAL, $"iova 0x{iova:x} is not a multiple of the smallest IOMMU page (0x{pgsize:x})");
            if (unmapAll)
            {
                if (iova != 0 || size != 0) return KResult.Err(EINVAL, $"FLAG_ALL needs iova and size 0; got 0x{iova:x}, 0x{size:x}");
                size = ulong.MaxValue;
            }
            else if (size == 0 || (size & (pgsize - 1)) != 0 || iova + size - 1 < iova)
                return KResult.Err(EINVAL, size == 0 ? "size is 0" : (size & (pgsize - 1)) != 0
                    ? $"size 0x{size:x} is not a multiple of the smallest IOMMU page (0x{pgsize:x})"
                    : $"[0x{iova:x}, +0x{size:x}) wraps past 2^64");
            if (getBitmap && (!dirtyPageTracking || bitmap.PgSize != pgsize))
                return KResult.Err(EINVAL, !dirtyPageTracking ? "GET_DIRTY_BITMAP needs dirty tracking started"
                    : $"bitmap pgsize 0x{bitmap.PgSize:x} is not the smallest IOMMU page (0x{pgsize:x})");

            if (v2 && !unmapAll)
            {
                if (FindDma(iova, 1) is { } first && first.Iova != iova)
                    return KResult.Err(EINVAL, $"[0x{iova:x}, +0x{size:x}) starts inside {first}; a v2 unmap may not cut a mapping");
                if (FindDma(iova + size - 1, 0) is { } last && last.End != (UInt128)iova + size)
                    return KResult.Err(EINVAL, $"[0x{iova:x}, +0x{size:x}) ends inside {last}; a v2 unmap may not cut a mapping");
            }

            var ret = KResult.Ok;
            var retries = 0;
            VfioDma? dmaLast = null;
        again:
            var i = FirstEndingAfter(iova);
            var firstIndex = i;
            while (i < dmas.Count)
            {
                var dma = dmas[i];
                if (dma.Iova >= (UInt128)iova + size) break;
                if (!v2 && iova > dma.Iova) break;
                if (invalidateVaddr)
                {
                    if (dma.VaddrInvalid)
                    {
                        for (var j = firstIndex; j < i; j++) { dmas[j].VaddrInvalid = false; vaddrInvalidCount--; }
                        unmapped = 0;
                        return KResult.Err(EINVAL, $"{dma} already has an invalid vaddr");
                    }
                    dma.VaddrInvalid = true;
                    vaddrInvalidCount++;
                    unmapped += dma.Size;
                    i++;
                    continue;
                }
                if (dma.Pfns.Count > 0)
                {
                    if (dmaLast == dma)
                    {
                        if (++retries > 10)
                            throw new InvalidOperationException($"kernel BUG: devices did not unpin the pages of {dma} when told to (vfio_notify_dma_unmap)");
                    }
                    else { dmaLast = dma; retries = 0; }
                    NotifyDmaUnmap(dma);
                    goto again;
                }
                if (getBitmap)
                {
                    var r = UpdateUserBitmap(target, dma, iova, pgsize);
                    if (r.Failed) { ret = r; break; }
                }
                unmapped += dma.Size;
                RemoveDma(dma);   // the next one slides into index i
            }
            return ret;
        }
    }

    /// <summary>vfio_notify_dma_unmap: tells every registered device to unpin its pages in the mapping (iommu-&gt;lock dropped meanwhile).</summary>
    void NotifyDmaUnmap(VfioDma dma)
    {
        var devs = devices.ToArray();
        Monitor.Exit(gate);
        try { foreach (var d in devs) d.DmaUnmap(dma.Iova, dma.Size); }
        finally { Monitor.Enter(gate); }
    }

    // ---- VFIO_IOMMU_DIRTY_PAGES ----

    /// <summary>VFIO_IOMMU_DIRTY_PAGES_FLAG_START: allocates a bitmap for every vfio_dma (pinned pages start dirty).</summary>
    public void StartDirtyTracking() => VfioException.Check("VFIO_IOMMU_DIRTY_PAGES", DirtyStartCore());

    /// <summary>VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP: frees every bitmap.</summary>
    public void StopDirtyTracking() => VfioException.Check("VFIO_IOMMU_DIRTY_PAGES", DirtyStopCore());

    internal KResult DirtyStartCore()
    {
        lock (gate)
        {
            if (!driverSet) return KResult.Err(EINVAL, "the container has no IOMMU yet (VFIO_SET_IOMMU first)");
            if (!v2) return KResult.Err(EACCES, "dirty page tracking needs a type1 v2 container (VFIO_TYPE1v2_IOMMU)");
            if (dirtyPageTracking) return KResult.Ok;
            var pgsize = 1UL << Bits.Ffs(pgsizeBitmap);
            for (var i = 0; i < dmas.Count; i++)
            {
                var r = AllocBitmap(dmas[i], pgsize);
                if (r.Failed)
                {
                    for (var j = 0; j < i; j++) { dmas[j].Bitmap!.Dispose(); dmas[j].Bitmap = null; }
                    return r;
                }
                PopulateBitmap(dmas[i], pgsize);
            }
            dirtyPageTracking = true;
            foreach (var t in trackers) if (!t.Running) t.Start();
            return KResult.Ok;
        }
    }

    internal KResult DirtyStopCore()
    {
        lock (gate)
        {
            if (!driverSet) return KResult.Err(EINVAL, "the container has no IOMMU yet (VFIO_SET_IOMMU first)");
            if (!v2) return KResult.Err(EACCES, "dirty page tracking needs a type1 v2 container (VFIO_TYPE1v2_IOMMU)");
            if (dirtyPageTracking)
            {
                dirtyPageTracking = false;
                foreach (var d in dmas) { d.Bitmap?.Dispose(); d.Bitmap = null; }
                foreach (var t in trackers) if (t.Running) t.Stop();
            }
            return KResult.Ok;
        }
    }

    /// <summary>vfio_dma_populate_bitmap: every pinned page counts as dirty.</summary>
    static void PopulateBitmap(VfioDma dma, ulong pgsize)
    {
        var shift = Bits.Ffs(pgsize);
        foreach (var iova in dma.Pfns.Keys) Bits.Set(dma.Bitmap!.Pointer, (iova - dma.Iova) >> shift, 1);
    }

    /// <summary>
    /// VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP over [iova, +size) at the smallest page size: a bitmap with a bit per page
    /// from <paramref name="iova"/> (holes stay 0). The range may span several mappings but not cut one.
    /// </summary>
    public DirtyBitmap GetDirtyBitmap(ulong iova, ulong size)
    {
        var pgsize = MinPageSize;
        var bm = new DirtyBitmap((long)(size / pgsize));
        GetDirtyBitmap(iova, size, bm.Words);
        return bm;
    }

    /// <summary>GET_BITMAP into caller words (OR-merged where mappings share a word; zero them first for a clean report).</summary>
    public void GetDirtyBitmap(ulong iova, ulong size, Span<ulong> words)
    {
        fixed (ulong* w = words)
        {
            var r = DirtyGetCore(iova, size, new VfioBitmap(MinPageSize, (ulong)words.Length * 8, 0), new BitmapTarget((byte*)w, (ulong)words.Length * 8));
            VfioException.Check("VFIO_IOMMU_DIRTY_PAGES", r);
        }
    }

    /// <summary>The GET_BITMAP checks from the copy of vfio_iommu_type1_dirty_bitmap_get on (vfio_iommu_type1_dirty_pages).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    internal KResult DirtyGetCore(ulong iova, ulong size, VfioBitmap bitmap, BitmapTarget target, bool accessOk = true)
    {
        lock (gate)
        {
            if (!driverSet) return KResult.Err(EINVAL, "the container has no IOMMU yet (VFIO_SET_IOMMU first)");
            if (!v2) return KResult.Err(EACCES, "dirty page tracking needs a type1 v2 container (VFIO_TYPE1v2_IOMMU)");
        }
        if (iova + size < iova) return KResult.Err(EINVAL, $"[0x{iova:x}, +0x{size:x}) wraps past 2^64");
        if (!accessOk) return KResult.Err(EINVAL, $"bitmap [0x{bitmap.Data:x}, +0x{bitmap.Size:x}) is not a user address range (access_ok)");
        var pgshift = Bits.Ffs(bitmap.PgSize);
        var vr = VerifyBitmapSize(size >> pgshift, bitmap.Size);
        if (vr.Failed) return vr;
        lock (gate)
        {
            var iommuPgsize = 1UL << Bits.Ffs(pgsizeBitmap);
            if (bitmap.PgSize != iommuPgsize)
                return KResult.Err(EINVAL, $"bitmap pgsize 0x{bitmap.PgSize:x}: only the smallest IOMMU page size (0x{iommuPgsize:x}) is supported");
            if ((iova & (iommuPgsize - 1)) != 0) return KResult.Err(EINVAL, $"iova 0x{iova:x} is not a multiple of 0x{iommuPgsize:x}");
            if (size == 0 || (size & (iommuPgsize - 1)) != 0) return KResult.Err(EINVAL, $"size 0x{size:x} is 0 or not a multiple of 0x{iommuPgsize:x}");
            if (!dirtyPageTracking) return KResult.Err(EINVAL, "dirty page tracking is not started (FLAG_START first)");
            return IovaDirtyBitmap(target, iova, size, bitmap.PgSize);
        }
    }

    /// <summary>verify_bitmap_size: npages and size nonzero, size at most DIRTY_BITMAP_SIZE_MAX and enough for npages.</summary>
    internal static KResult VerifyBitmapSize(ulong npages, ulong bitmapSize)
    {
        if (npages == 0 || bitmapSize == 0 || bitmapSize > VfioUapi.DirtyBitmapSizeMax || bitmapSize < VfioUapi.DirtyBitmapBytes(npages))
            return KResult.Err(EINVAL, npages == 0 ? "the range has no pages" : bitmapSize == 0 ? "bitmap size is 0"
                : bitmapSize > VfioUapi.DirtyBitmapSizeMax ? $"bitmap size {bitmapSize} exceeds DIRTY_BITMAP_SIZE_MAX ({VfioUapi.DirtyBitmapSizeMax})"
                : $"bitmap size {bitmapSize} is smaller than the {VfioUapi.DirtyBitmapBytes(npages)} bytes {npages} pages need");
        return KResult.Ok;
    }

    /// <summary>vfio_iova_dirty_bitmap: checks the range cuts no mapping, then reports every mapping inside it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    KResult IovaDirtyBitmap(BitmapTarget target, ulong iova, ulong size, ulong pgsize)
    {
        if (FindDma(iova, 1) is { } first && first.Iova != iova)
            return KResult.Err(EINVAL, $"[0x{iova:x}, +0x{size:x}) starts inside {first}; GET_BITMAP may not cut a mapping");
        if (FindDma(iova + size - 1, 0) is { } last && last.End != (UInt128)iova + size)
            return KResult.Err(EINVAL, $"[0x{iova:x}, +0x{size:x}) ends inside {last}; GET_BITMAP may not cut a mapping");
        for (var i = FirstEndingAfter(iova); i < dmas.Count; i++)
        {
            var dma = dmas[i];
            if (dma.Iova < iova) continue;
            if (dma.Iova > iova + size - 1) break;
            var r = UpdateUserBitmap(target, dma, iova, pgsize);
            if (r.Failed) return r;
            PopulateBitmap(dma, pgsize);
        }
        return KResult.Ok;
    }

    /// <summary>
    /// update_user_bitmap followed by the clear of vfio_iova_dirty_bitmap, fused into one pass over the words. As in
    /// the kernel: a dma whose first bit does not start a 64-bit word of the user bitmap is shifted left by that many
    /// bits and the user's word is OR-merged in (the previous mapping's tail lives there); lim =
    /// DIRTY_BITMAP_BYTES(nbits + shift) bytes are copied; then only bits [0, nbits) are cleared, so the shifted tail
    /// past nbits stays in the dma's bitmap — the kernel's own state, reproduced bit for bit.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    KResult UpdateUserBitmap(BitmapTarget target, VfioDma dma, ulong baseIova, ulong pgsize)
    {
        var pgshift = Bits.Ffs(pgsize);
        var nbits = dma.Size >> pgshift;
        var bitOffset = (dma.Iova - baseIova) >> pgshift;
        var copyOffset = bitOffset / 64;
        var shift = (int)(bitOffset % 64);
        var map = dma.Bitmap!.Pointer;

        if (numNonPinnedGroups > 0 && dma.IommuMapped) Bits.Set(map, 0, nbits);

        var lim = (long)(VfioUapi.DirtyBitmapBytes(nbits + (ulong)shift) / 8);
        if (!target.Covers(copyOffset * 8, (ulong)lim * 8))
            return KResult.Err(EFAULT, $"the bitmap words [{copyOffset}, {copyOffset + (ulong)lim}) for {dma} are not all writable user memory");
        var user = (ulong*)(target.P + copyOffset * 8);
        var fullWords = (long)(nbits >> 6);        // words lying entirely below nbits
        var boundaryMask = ~0UL << (int)(nbits & 63); // bits of word fullWords at or above nbits (kept)

        if (shift == 0)
        {
            Bits.CopyAndClear(map, user, Math.Min(fullWords, lim));
            if (fullWords < lim)
            {
                // the word holding nbits (and any stale bits past it), copied whole, cleared below nbits
                var v = map[fullWords];
                user[fullWords] = v;
                map[fullWords] = ClearShiftedTail ? 0 : v & boundaryMask;
            }
            return KResult.Ok;
        }

        // bitmap_shift_left(map, map, shift, nbits + shift), bitmap_or with the user's leftover word, copy: computed
        // straight into the user's words from the unmodified map (vectorised), then the map gets its post-report state
        var inv = 64 - shift;
        user[0] = (map[0] << shift) | user[0];
        long k = 1;
        // word k needs map[k] and map[k-1]; once computed, map[k-1] is never read again and can be cleared
        if (Vector256.IsHardwareAccelerated)
            for (; k + 4 <= lim; k += 4)
            {
                ((Vector256.Load(map + k) << shift) | (Vector256.Load(map + k - 1) >> inv)).Store(user + k);
                Vector256<ulong>.Zero.Store(map + k - 1);
            }
        for (; k < lim; k++)
        {
            user[k] = (map[k] << shift) | (map[k - 1] >> inv);
            map[k - 1] = 0;
        }
        // bitmap_clear(map, 0, nbits) on the shifted words: below nbits zero (done), the rest keeps the shifted bits
        // (lim > fullWords whenever shift > 0, so map[lim - 1] is set here)
        map[fullWords] = ClearShiftedTail ? 0 : user[fullWords] & boundaryMask;
        for (k = fullWords + 1; k < lim; k++) map[k] = ClearShiftedTail ? 0 : user[k];
        return KResult.Ok;
    }

    // ---- pinning and vfio_dma_rw (the mediated-device side) ----

    /// <summary>
    /// vfio_pin_pages for <paramref name="device"/>: pins <paramref name="npage"/> pages from <paramref name="iova"/>
    /// (each inside a mapping with <paramref name="prot"/>), returns their guest-physical addresses. While tracking,
    /// a pinned page is dirty in every report until unpinned. A group that pins joins the pinned-page dirty scope.
    /// </summary>
    public ulong[] PinPages(IVfioDevice device, ulong iova, int npage, DmaProt prot)
    {
        var gpas = new ulong[Math.Max(0, npage)];
        VfioException.Check("vfio_pin_pages", PinCore(device, iova, npage, prot, gpas));
        return gpas;
    }

    internal const int PinPagesMaxEntries = 4096 / 8;   // VFIO_PIN_PAGES_MAX_ENTRIES

    internal KResult PinCore(IVfioDevice device, ulong userIova, int npage, DmaProt prot, Span<ulong> gpas)
    {
        if (npage <= 0) return KResult.Err(EINVAL, $"npage {npage} must be positive");
        if (npage > PinPagesMaxEntries) return KResult.Err(E2BIG, $"npage {npage} exceeds VFIO_PIN_PAGES_MAX_ENTRIES ({PinPagesMaxEntries})");
        lock (gate)
        {
            if (!driverSet) return KResult.Err(ENOTTY, "the container has no IOMMU driver");
            if (!v2) return KResult.Err(EACCES, "page pinning needs a type1 v2 container");
            if (vaddrInvalidCount > 0) return KResult.Err(EBUSY, "vfio_pin_pages is not allowed while vaddrs are invalidated");
            if (devices.Count == 0) return KResult.Err(EINVAL, "no device registered for dma_unmap notifications (RegisterDevice first)");
            var pgshift = Bits.Ffs(pgsizeBitmap);
            for (var i = 0; i < npage; i++)
            {
                var iova = userIova + 4096UL * (ulong)i;
                var dma = FindDma(iova, 4096);
                KResult fail = default;
                if (dma is null) fail = KResult.Err(EINVAL, $"iova 0x{iova:x} is not mapped");
                else if ((dma.Prot & prot) != prot) fail = KResult.Err(EPERM, $"pinning for {prot} but {dma} allows {dma.Prot}");
                else if (dma.Pfns.TryGetValue(iova, out var vp))
                {
                    dma.Pfns[iova] = (vp.Gfn, vp.Refs + 1);
                    gpas[i] = vp.Gfn << 12;
                    continue;
                }
                else if (User.GuestPhysical(dma.Vaddr + (iova - dma.Iova)) is not { } gpa)
                    fail = KResult.Err(EFAULT, $"vaddr 0x{dma.Vaddr + (iova - dma.Iova):x} of iova 0x{iova:x} is not guest RAM (get_user_pages fails)");
                else
                {
                    dma.Pfns[iova] = (gpa >> 12, 1);
                    gpas[i] = gpa & ~4095UL;
                    if (dirtyPageTracking) Bits.Set(dma.Bitmap!.Pointer, (iova - dma.Iova) >> pgshift, 1);
                    foreach (var t in trackers) t.OnPin(iova);
                    continue;
                }
                for (var j = 0; j < i; j++) UnpinOne(userIova + 4096UL * (ulong)j);
                gpas.Clear();
                return fail;
            }
            if (!device.Group.PinnedPageDirtyScope && device.Group.Attached)
            {
                device.Group.PinnedPageDirtyScope = true;
                numNonPinnedGroups--;
            }
            return new KResult(npage);
        }
    }

    /// <summary>vfio_unpin_pages: drops one reference on each of <paramref name="npage"/> pages from <paramref name="iova"/>.</summary>
    public void UnpinPages(IVfioDevice device, ulong iova, int npage)
    {
        if (npage <= 0 || npage > PinPagesMaxEntries)
            throw new ArgumentOutOfRangeException(nameof(npage), npage, $"npage must be 1..{PinPagesMaxEntries} (the kernel WARNs and does nothing)");
        lock (gate)
        {
            if (!v2) throw new InvalidOperationException("vfio_unpin_pages on a container that is not type1 v2 (the kernel WARNs)");
            for (var i = 0; i < npage; i++)
                if (!UnpinOne(iova + 4096UL * (ulong)i)) break;
        }
    }

    bool UnpinOne(ulong iova)
    {
        var dma = FindDma(iova, 4096);
        if (dma is null) return false;
        if (dma.Pfns.TryGetValue(iova, out var vp))
        {
            if (vp.Refs > 1) dma.Pfns[iova] = (vp.Gfn, vp.Refs - 1);
            else
            {
                dma.Pfns.Remove(iova);
                foreach (var t in trackers) t.OnUnpin(iova);
            }
        }
        return true;
    }

    /// <summary>Pages pinned now, over all mappings.</summary>
    public int PinnedPages { get { lock (gate) return dmas.Sum(d => d.Pfns.Count); } }

    /// <summary>
    /// vfio_dma_rw: the kernel copies <paramref name="data"/> to (or from) the mapping's memory for a mediated device; a
    /// write sets the dirty bits of the pages it touched. The bytes go through the container's IOVA space into guest RAM.
    /// </summary>
    public void DmaRw(ulong iova, Span<byte> data, bool write) => VfioException.Check("vfio_dma_rw", DmaRwCore(iova, data, write));

    internal KResult DmaRwCore(ulong userIova, Span<byte> data, bool write)
    {
        if (data.Length == 0) return KResult.Err(EINVAL, "length must be positive");
        lock (gate)
        {
            if (!driverSet) return KResult.Err(ENOTTY, "the container has no IOMMU driver");
            if (vaddrInvalidCount > 0) return KResult.Err(EBUSY, "vfio_dma_rw is not allowed while vaddrs are invalidated");
            var pgshift = Bits.Ffs(pgsizeBitmap);
            var done = 0;
            while (done < data.Length)
            {
                var iova = userIova + (ulong)done;
                var dma = FindDma(iova, 1);
                if (dma is null) return KResult.Err(EINVAL, $"iova 0x{iova:x} is not mapped");
                if ((write && (dma.Prot & DmaProt.Write) == 0) || (dma.Prot & DmaProt.Read) == 0)
                    return KResult.Err(EPERM, $"{dma} does not allow {(write ? "writes" : "reads")} (vfio_dma_rw needs READ for both)");
                var offset = iova - dma.Iova;
                var count = (int)Math.Min((ulong)(data.Length - done), dma.Size - offset);
                if (!CopyThroughIova(iova, dma, data.Slice(done, count), write))
                    return KResult.Err(EFAULT, $"vaddr 0x{dma.Vaddr + offset:x} of iova 0x{iova:x} is not guest RAM");
                if (write)
                {
                    if (dirtyPageTracking)
                        Bits.Set(dma.Bitmap!.Pointer, offset >> pgshift, ((offset + (ulong)count - 1) >> pgshift) - (offset >> pgshift) + 1);
                    foreach (var t in trackers) t.OnWrite(iova, (ulong)count, DmaPath.CpuCopy);
                }
                done += count;
            }
            return KResult.Ok;
        }
    }

    /// <summary>
    /// Records that a device wrote [iova, +length) by the given path, without moving bytes: for replays of recorded
    /// traffic and for benches that measure the tracking, not the copy. A CpuCopy write sets type1's bits as vfio_dma_rw
    /// does; every path is shown to the attached trackers.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public void RecordDeviceWrite(ulong iova, ulong length, DmaPath path)
    {
        if (length == 0) return;
        lock (gate)
        {
            if (path == DmaPath.CpuCopy && dirtyPageTracking)
            {
                var pgshift = Bits.Ffs(pgsizeBitmap);
                var end = (UInt128)iova + length;
                for (var i = FirstEndingAfter(iova); i < dmas.Count && dmas[i].Iova < end; i++)
                {
                    var d = dmas[i];
                    var s = Math.Max(iova, d.Iova) - d.Iova;
                    var e = (ulong)(UInt128.Min(end, d.End) - d.Iova);
                    Bits.Set(d.Bitmap!.Pointer, s >> pgshift, ((e - 1) >> pgshift) - (s >> pgshift) + 1);
                }
            }
            foreach (var t in trackers) t.OnWrite(iova, length, path);
        }
    }

    /// <summary>A device's DMA write that bypassed type1 (through the IOMMU, or into a page it pinned): trackers see it, type1 does not.</summary>
    internal void ObserveDeviceWrite(ulong iova, ulong length, DmaPath path)
    {
        lock (gate) foreach (var t in trackers) t.OnWrite(iova, length, path);
    }

    public void Dispose()
    {
        lock (gate)
        {
            foreach (var g in groups.ToArray()) RemoveGroup(g);
            if (driverSet) ReleaseIommu();
        }
    }

    public override string ToString()
    {
        lock (gate)
            return $"VFIO container: {(driverSet ? v2 ? "type1 v2" : "type1" : "no IOMMU")}, {groups.Count} group(s), {dmas.Count} mapping(s), " +
                   $"dirty tracking {(dirtyPageTracking ? "on" : "off")}, pgsizes 0x{pgsizeBitmap:x}";
    }
}
