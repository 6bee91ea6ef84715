using System.Buffers.Binary;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Virtio;
using VirtLab.Sdk.Native;
using static VirtLab.Plugins.Vdpa.Uapi.Vhost;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;

namespace VirtLab.Plugins.Vdpa;

/// <summary>
/// An open /dev/vhost-vdpa-N (drivers/vhost/vdpa.c over a <see cref="VdpaDevice"/>): the ioctls and the IOTLB
/// write() with the kernel's checks, in the kernel's order, returning its result or negative errno. The owner's
/// address space is the VM's host mapping: a uaddr is a host virtual address inside a memslot, translated to the
/// guest-physical address the device map points at (what pin_user_pages would find).
///
/// Where this follows the seed rather than today's kernel: the features offered and accepted are masked by the
/// seed's per-type list (VHOST_VDPA_NET_FEATURES, and the same transport list plus the block bits for a block
/// device); vrings are programmable only with FEATURES_OK set and DRIVER_OK clear (-EBUSY), and not while the
/// queue is enabled, except SET_VRING_ENABLE after DRIVER_OK once ENABLE_AFTER_DRIVER_OK is acked and
/// GET_VRING_BASE while suspended; SET_MEM_TABLE installs the table as the device map (the seed's set_map(umem)).
/// </summary>
public sealed partial class VhostVdpa
{
    /// <summary>The seed's VHOST_VDPA_FEATURES: transport bits vhost-vdpa lets through for every device type.</summary>
    public static readonly ulong TransportFeatures = Bit(F_NOTIFY_ON_EMPTY) | Bit(F_ANY_LAYOUT) | Bit(F_VERSION_1) |
        Bit(F_ACCESS_PLATFORM) | Bit(F_RING_PACKED) | Bit(F_ORDER_PLATFORM) | Bit(RING_F_INDIRECT_DESC) | Bit(RING_F_EVENT_IDX);

    /// <summary>The seed's VHOST_VDPA_NET_FEATURES.</summary>
    public static readonly ulong NetFeatures = TransportFeatures | Bit(VirtioNet.F_CSUM) | Bit(VirtioNet.F_GUEST_CSUM) |
        Bit(VirtioNet.F_MTU) | Bit(VirtioNet.F_MAC) | Bit(VirtioNet.F_GUEST_TSO4) | Bit(VirtioNet.F_GUEST_TSO6) |
        Bit(VirtioNet.F_GUEST_ECN) | Bit(VirtioNet.F_GUEST_UFO) | Bit(VirtioNet.F_HOST_TSO4) | Bit(VirtioNet.F_HOST_TSO6) |
        Bit(VirtioNet.F_HOST_ECN) | Bit(VirtioNet.F_HOST_UFO) | Bit(VirtioNet.F_MRG_RXBUF) | Bit(VirtioNet.F_STATUS) |
        Bit(VirtioNet.F_SPEED_DUPLEX);

    /// <summary>The block counterpart (the seed supports net only): transport bits plus what vdpa_sim_blk offers.</summary>
    public static readonly ulong BlockFeatures = TransportFeatures | Bit(VirtioBlk.F_SIZE_MAX) | Bit(VirtioBlk.F_SEG_MAX) |
        Bit(VirtioBlk.F_BLK_SIZE) | Bit(VirtioBlk.F_TOPOLOGY) | Bit(VirtioBlk.F_MQ) | Bit(VirtioBlk.F_FLUSH);

    /// <summary>VHOST_VDPA_BACKEND_FEATURES plus what this parent supports (suspend, resume, persistent map,
    /// enable after DRIVER_OK); DESC_ASID needs a descriptor group, which these devices lack.</summary>
    public static readonly ulong OfferedBackendFeatures = 1UL << VHOST_BACKEND_F_IOTLB_MSG_V2 | 1UL << VHOST_BACKEND_F_IOTLB_BATCH |
        1UL << VHOST_BACKEND_F_IOTLB_ASID | 1UL << VHOST_BACKEND_F_SUSPEND | 1UL << VHOST_BACKEND_F_RESUME |
        1UL << VHOST_BACKEND_F_IOTLB_PERSIST | 1UL << VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK;

    /// <summary>What SET_BACKEND_FEATURES accepts at all before the per-capability checks.</summary>
    static readonly ulong AcceptedBackendFeatures = 1UL << VHOST_BACKEND_F_IOTLB_MSG_V2 | 1UL << VHOST_BACKEND_F_IOTLB_BATCH |
        1UL << VHOST_BACKEND_F_IOTLB_ASID | 1UL << VHOST_BACKEND_F_DESC_ASID | 1UL << VHOST_BACKEND_F_IOTLB_PERSIST |
        1UL << VHOST_BACKEND_F_SUSPEND | 1UL << VHOST_BACKEND_F_RESUME | 1UL << VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK;

    /// <summary>vhost's max_mem_regions module parameter default.</summary>
    public const int MaxMemRegions = 64;
    /// <summary>One address space and one virtqueue group (ASID 0).</summary>
    public const uint AsNum = 1, GroupNum = 1;
    const ulong PageSize = 4096, PageMask = ~(PageSize - 1);

    sealed class Vq
    {
        public uint Num;
        public ulong Desc, Avail, Used, Log;
        public bool LogUsed;
        public ushort LastAvailIdx;
        public EventNotifier? Kick, Call, Err;
    }

    readonly object mutex = new();          // vhost_dev.mutex
    readonly Vm vm;
    readonly Vq[] vqs;
    readonly Func<int, (int Errno, EventNotifier? File)> eventFds;
    bool owned;
    ulong backendFeatures;
    bool inBatch;
    uint batchAsid;
    EventNotifier? configCall;

    /// <param name="device">The parent device.</param>
    /// <param name="vm">The owner's memory: IOTLB uaddrs and SET_MEM_TABLE userspace addresses are host addresses of its slots.</param>
    /// <param name="eventFds">Resolves an fd given to SET_VRING_KICK/CALL/ERR or SET_CONFIG_CALL (errno 0 and the eventfd,
    /// or EBADF for no such fd, EINVAL for an fd that is not an eventfd).</param>
    public VhostVdpa(VdpaDevice device, Vm vm, Func<int, (int Errno, EventNotifier? File)> eventFds)
    {
        Device = device;
        this.vm = vm;
        this.eventFds = eventFds;
        vqs = Enumerable.Range(0, device.Nvqs).Select(_ => new Vq()).ToArray();
        Iotlb = new IovaSpace(vm.PhysicalSpace, $"{device.Name} vhost AS 0", IovaFirst, IovaLast);
        device.Bind(vm);
        // vhost_vdpa_open: the device starts from reset.
        device.Reset(cleanMap: true);
    }

    public VdpaDevice Device { get; }
    /// <summary>vhost's own table of ASID 0 (struct vhost_iotlb: what IOTLB messages built), kept for the overlap
    /// check and handed whole to the device by set_map. Nothing is ever accessed through it.</summary>
    public IovaSpace Iotlb { get; }
    public ulong AckedBackendFeatures { get { lock (mutex) return backendFeatures; } }
    public bool InBatch { get { lock (mutex) return inBatch; } }
    public VhostCounters Counters { get; } = new();
    /// <summary>The errno the IOTLB message handler returned for the last failed write() (which itself returns -EFAULT).</summary>
    public int LastIotlbErrno { get; private set; }

    bool HasBackendFeature(int bit) => (backendFeatures & 1UL << bit) != 0;

    ulong FeatureMask => Device.DeviceId switch
    {
        ID_NET => NetFeatures,
        ID_BLOCK => BlockFeatures,
        _ => 0,
    };

    // =====================================================================================================
    // ioctl(2)
    // =====================================================================================================

    /// <summary>
    /// ioctl(fd, cmd, arg): <paramref name="arg"/> holds the uAPI struct (including any trailing array); a span too
    /// short for what the kernel copies gives -EFAULT, as copy_from_user/copy_to_user would. Returns 0 or -errno.
    /// </summary>
    public long Ioctl(uint cmd, Span<byte> arg)
    {
        long r = IoctlCore(cmd, arg);
        Counters.Ioctl(cmd, r);
        return r;
    }

    long IoctlCore(uint cmd, Span<byte> arg)
    {
        if (cmd == VHOST_SET_BACKEND_FEATURES)
        {
            if (!ReadU64(arg, 0, out var features)) return -Errno.EFAULT;
            return DoSetBackendFeatures(features);
        }

        lock (mutex)
        {
            if (cmd == VHOST_VDPA_GET_DEVICE_ID) return WriteU32(arg, Device.DeviceId);
            if (cmd == VHOST_VDPA_GET_STATUS) return arg.Length < 1 ? -Errno.EFAULT : Put(arg, Device.GetStatus());
            if (cmd == VHOST_VDPA_SET_STATUS) return arg.Length < 1 ? -Errno.EFAULT : DoSetStatus(arg[0]);
            if (cmd == VHOST_VDPA_GET_CONFIG) return GetConfig(arg);
            if (cmd == VHOST_VDPA_SET_CONFIG) return SetConfig(arg);
            if (cmd == VHOST_GET_FEATURES) return WriteU64(arg, Device.SupportedFeatures & FeatureMask);
            if (cmd == VHOST_SET_FEATURES) return SetFeatures(arg);
            if (cmd == VHOST_VDPA_GET_VRING_NUM) return WriteU16(arg, VdpaDevice.QueueMax);
            if (cmd == VHOST_VDPA_GET_GROUP_NUM) return WriteU32(arg, GroupNum);
            if (cmd == VHOST_VDPA_GET_AS_NUM) return WriteU32(arg, AsNum);
            if (cmd == VHOST_SET_LOG_BASE || cmd == VHOST_SET_LOG_FD) return -Errno.ENOTTY; // -ENOIOCTLCMD, as vfs_ioctl reports it
            if (cmd == VHOST_VDPA_SET_CONFIG_CALL) return SetConfigCall(arg);
            if (cmd == VHOST_GET_BACKEND_FEATURES) return WriteU64(arg, OfferedBackendFeatures);
            if (cmd == VHOST_VDPA_GET_IOVA_RANGE)
            {
                if (arg.Length < IovaRangeSize) return -Errno.EFAULT;
                BinaryPrimitives.WriteUInt64LittleEndian(arg, IovaFirst);
                BinaryPrimitives.WriteUInt64LittleEndian(arg[8..], IovaLast);
                return 0;
            }
            if (cmd == VHOST_VDPA_GET_CONFIG_SIZE) return WriteU32(arg, (uint)Device.ConfigSize);
            if (cmd == VHOST_VDPA_GET_VQS_COUNT) return WriteU32(arg, (uint)Device.Nvqs);
            if (cmd == VHOST_VDPA_SUSPEND) return Device.Suspend();
            if (cmd == VHOST_VDPA_RESUME) return Device.Resume();

            long r = DevIoctl(cmd, arg);
            if (r == -Errno.ENOTTY) r = VringIoctl(cmd, arg);
            return r;
        }
    }

    /// <summary>The IOVA range the device can map (vdpa_sim: all of it).</summary>
    public const ulong IovaFirst = 0, IovaLast = ulong.MaxValue;

    long DoSetBackendFeatures(ulong features)
    {
        if ((features & ~AcceptedBackendFeatures) != 0) return -Errno.EOPNOTSUPP;
        if ((features & 1UL << VHOST_BACKEND_F_DESC_ASID) != 0 && (features & 1UL << VHOST_BACKEND_F_IOTLB_ASID) == 0) return -Errno.EINVAL;
        if ((features & 1UL << VHOST_BACKEND_F_DESC_ASID) != 0) return -Errno.EOPNOTSUPP; // no descriptor group
        lock (mutex) backendFeatures = features;
        return 0;
    }

    long DoSetStatus(byte status)
    {
        var old = Device.GetStatus();
        // Userspace may not remove status bits except by resetting to 0.
        if (status != 0 && (old & ~status) != 0) return -Errno.EINVAL;
        if (status == 0) Device.Reset(cleanMap: !HasBackendFeature(VHOST_BACKEND_F_IOTLB_PERSIST));
        else Device.SetStatus(status);
        return 0;
    }

    /// <summary>vhost_vdpa_config_validate; the callers turn any failure (E2BIG included) into -EINVAL.</summary>
    int ConfigValidate(uint off, uint len)
    {
        long size = Device.ConfigSize;
        if (len == 0 || off > size) return -Errno.EINVAL;
        if (len > size - off) return -Errno.E2BIG;
        return 0;
    }

    long GetConfig(Span<byte> arg)
    {
        if (!ReadU32(arg, 0, out var off) || !ReadU32(arg, 4, out var len)) return -Errno.EFAULT;
        if (ConfigValidate(off, len) != 0) return -Errno.EINVAL;
        if ((ulong)arg.Length < VdpaConfigHeaderSize + (ulong)len) return -Errno.EFAULT;
        Device.GetConfig(off, arg.Slice(VdpaConfigHeaderSize, (int)len));
        return 0;
    }

    long SetConfig(Span<byte> arg)
    {
        if (!ReadU32(arg, 0, out var off) || !ReadU32(arg, 4, out var len)) return -Errno.EFAULT;
        if (ConfigValidate(off, len) != 0) return -Errno.EINVAL;
        if ((ulong)arg.Length < VdpaConfigHeaderSize + (ulong)len) return -Errno.EFAULT;
        Device.SetConfig(off, arg.Slice(VdpaConfigHeaderSize, (int)len));
        return 0;
    }

    long SetFeatures(Span<byte> arg)
    {
        // Features are frozen once negotiated.
        if ((Device.GetStatus() & FEATURES_OK) != 0) return -Errno.EBUSY;
        if (!ReadU64(arg, 0, out var features)) return -Errno.EFAULT;
        if ((features & ~FeatureMask) != 0) return -Errno.EINVAL;
        if (Device.SetDriverFeatures(features) != 0) return -Errno.EINVAL;
        return 0;
    }

    long SetConfigCall(Span<byte> arg)
    {
        if (!ReadS32(arg, 0, out var fd)) return -Errno.EFAULT;
        if (fd == VHOST_FILE_UNBIND) { configCall = null; return 0; }
        var (errno, file) = eventFds(fd);
        if (errno != 0) { configCall = null; return -errno; }
        configCall = file;
        return 0;
    }

    /// <summary>The config-change eventfd (VHOST_VDPA_SET_CONFIG_CALL), or null.</summary>
    public EventNotifier? ConfigCall { get { lock (mutex) return configCall; } }

    // vhost_dev_ioctl: SET_OWNER, then the owner-only commands; -ENOTTY stands for -ENOIOCTLCMD (not handled here).
    long DevIoctl(uint cmd, Span<byte> arg)
    {
        if (cmd == VHOST_SET_OWNER)
        {
            if (owned) return -Errno.EBUSY;
            owned = true;
            return 0;
        }
        if (!owned) return -Errno.EPERM;
        if (cmd == VHOST_SET_MEM_TABLE) return SetMemTable(arg);
        return -Errno.ENOTTY;
    }

    long SetMemTable(Span<byte> arg)
    {
        if (!ReadU32(arg, 0, out var nregions) || !ReadU32(arg, 4, out var padding)) return -Errno.EFAULT;
        if (padding != 0) return -Errno.EOPNOTSUPP;
        if (nregions > MaxMemRegions) return -Errno.E2BIG;
        if ((ulong)arg.Length < MemoryHeaderSize + (ulong)nregions * MemoryRegionSize) return -Errno.EFAULT;
        var umem = new List<IovaMapping>();
        for (int i = 0; i < nregions; i++)
        {
            var r = arg.Slice(MemoryHeaderSize + i * MemoryRegionSize, MemoryRegionSize);
            ulong gpa = BinaryPrimitives.ReadUInt64LittleEndian(r), size = BinaryPrimitives.ReadUInt64LittleEndian(r[8..]),
                uaddr = BinaryPrimitives.ReadUInt64LittleEndian(r[16..]);
            ulong last = unchecked(gpa + size - 1);
            if (size == 0 || last < gpa || umem.Any(m => m.Overlaps(gpa, size))) return -Errno.EFAULT;
            // The device must reach this memory: every byte of the region lies in the owner's (the VM's) mappings.
            var chunks = Translate(uaddr, size);
            if (chunks is null) return -Errno.EFAULT;
            ulong iova = gpa;
            foreach (var (target, len) in chunks)
            {
                umem.Add(new IovaMapping(iova, len, target, MemoryAccess.ReadWrite));
                iova += len;
            }
        }
        return Device.SetMap(umem);
    }

    long VringIoctl(uint cmd, Span<byte> arg)
    {
        if (!ReadU32(arg, 0, out var idx)) return -Errno.EFAULT;
        if (idx >= vqs.Length) return -Errno.ENOBUFS;
        var vq = vqs[idx];
        int i = (int)idx;

        if (cmd == VHOST_VDPA_GET_VRING_GROUP)
        {
            if (arg.Length < VringStateSize) return -Errno.EFAULT;
            BinaryPrimitives.WriteUInt32LittleEndian(arg[4..], 0);
            return 0;
        }
        if (cmd == VHOST_VDPA_GET_VRING_DESC_GROUP) return -Errno.EOPNOTSUPP;
        if (cmd == VHOST_VDPA_SET_GROUP_ASID)
        {
            if (!ReadU32(arg, 4, out var asid)) return -Errno.EFAULT;
            return asid >= AsNum ? -Errno.EINVAL : 0;
        }
        if (cmd == VHOST_VDPA_GET_VRING_SIZE)
        {
            if (arg.Length < VringStateSize) return -Errno.EFAULT;
            BinaryPrimitives.WriteUInt32LittleEndian(arg[4..], Device.Vqs[i].Num);
            return 0;
        }

        var status = Device.GetStatus();
        bool window = (status & FEATURES_OK) != 0 && (status & DRIVER_OK) == 0;
        bool enableAfterDriverOk = cmd == VHOST_VDPA_SET_VRING_ENABLE && (status & FEATURES_OK) != 0 &&
                                   HasBackendFeature(VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK);
        bool baseWhileSuspended = cmd == VHOST_GET_VRING_BASE && Device.Suspended;
        if (IsVringCommand(cmd) && !window && !enableAfterDriverOk && !baseWhileSuspended) return -Errno.EBUSY;

        if (cmd == VHOST_VDPA_SET_VRING_ENABLE)
        {
            if (!ReadU32(arg, 4, out var num)) return -Errno.EFAULT;
            Device.SetVqReady(i, num != 0);
            return 0;
        }

        // Programming a queue while it is enabled is not allowed.
        if (IsVringCommand(cmd) && Device.GetVqReady(i) && !baseWhileSuspended) return -Errno.EBUSY;

        if (cmd == VHOST_GET_VRING_BASE) vq.LastAvailIdx = Device.GetVqState(i);

        long r = VhostVringIoctl(cmd, arg, vq, idx);
        if (r != 0) return r;

        if (cmd == VHOST_SET_VRING_ADDR) Device.SetVqAddress(i, vq.Desc, vq.Avail, vq.Used);
        else if (cmd == VHOST_SET_VRING_BASE) Device.SetVqState(i, vq.LastAvailIdx);
        else if (cmd == VHOST_SET_VRING_CALL) Device.SetVqCall(i, vq.Call);
        else if (cmd == VHOST_SET_VRING_KICK) Device.SetVqKick(i, vq.Kick);
        else if (cmd == VHOST_SET_VRING_NUM) Device.SetVqNum(i, vq.Num);
        return 0;
    }

    static bool IsVringCommand(uint cmd) =>
        cmd == VHOST_SET_VRING_NUM || cmd == VHOST_SET_VRING_ADDR || cmd == VHOST_SET_VRING_BASE || cmd == VHOST_GET_VRING_BASE ||
        cmd == VHOST_SET_VRING_KICK || cmd == VHOST_SET_VRING_CALL || cmd == VHOST_SET_VRING_ERR || cmd == VHOST_VDPA_SET_VRING_ENABLE;

    // drivers/vhost/vhost.c vhost_vring_ioctl (the queue index was checked by the caller).
    long VhostVringIoctl(uint cmd, Span<byte> arg, Vq vq, uint idx)
    {
        if (cmd == VHOST_SET_VRING_NUM)
        {
            if (!ReadU32(arg, 4, out var num)) return -Errno.EFAULT;
            if (num == 0 || num > 0xffff || (num & (num - 1)) != 0) return -Errno.EINVAL;
            vq.Num = num;
            return 0;
        }
        if (cmd == VHOST_SET_VRING_ADDR)
        {
            if (arg.Length < VringAddrSize) return -Errno.EFAULT;
            uint flags = BinaryPrimitives.ReadUInt32LittleEndian(arg[4..]);
            ulong desc = BinaryPrimitives.ReadUInt64LittleEndian(arg[8..]), used = BinaryPrimitives.ReadUInt64LittleEndian(arg[16..]),
                avail = BinaryPrimitives.ReadUInt64LittleEndian(arg[24..]), log = BinaryPrimitives.ReadUInt64LittleEndian(arg[32..]);
            if ((flags & ~(1u << VHOST_VRING_F_LOG)) != 0) return -Errno.EOPNOTSUPP;
            // VRING_AVAIL_ALIGN_SIZE 2, VRING_USED_ALIGN_SIZE 4.
            if ((avail & 1) != 0 || (used & 3) != 0 || (log & 3) != 0) return -Errno.EINVAL;
            vq.LogUsed = (flags & 1) != 0;
            vq.Desc = desc; vq.Avail = avail; vq.Used = used; vq.Log = log;
            return 0;
        }
        if (cmd == VHOST_SET_VRING_BASE)
        {
            if (!ReadU32(arg, 4, out var num)) return -Errno.EFAULT;
            if (num > 0xffff) return -Errno.EINVAL;
            vq.LastAvailIdx = (ushort)num;
            return 0;
        }
        if (cmd == VHOST_GET_VRING_BASE)
        {
            if (arg.Length < VringStateSize) return -Errno.EFAULT;
            BinaryPrimitives.WriteUInt32LittleEndian(arg, idx);
            BinaryPrimitives.WriteUInt32LittleEndian(arg[4..], vq.LastAvailIdx);
            return 0;
        }
        if (cmd == VHOST_SET_VRING_KICK || cmd == VHOST_SET_VRING_CALL || cmd == VHOST_SET_VRING_ERR)
        {
            if (!ReadS32(arg, 4, out var fd)) return -Errno.EFAULT;
            EventNotifier? file = null;
            if (fd != VHOST_FILE_UNBIND)
            {
                var (errno, f) = eventFds(fd);
                if (errno != 0) return -errno;
                file = f;
            }
            if (cmd == VHOST_SET_VRING_KICK) vq.Kick = file;
            else if (cmd == VHOST_SET_VRING_CALL) vq.Call = file;
            else vq.Err = file;
            return 0;
        }
        return -Errno.ENOTTY;
    }

    /// <summary>The kick eventfd bound to queue <paramref name="idx"/>, or null.</summary>
    public EventNotifier? KickOf(int idx) { lock (mutex) return vqs[idx].Kick; }
    /// <summary>The call eventfd bound to queue <paramref name="idx"/>, or null.</summary>
    public EventNotifier? CallOf(int idx) { lock (mutex) return vqs[idx].Call; }

    // =====================================================================================================
    // write(2): IOTLB messages
    // =====================================================================================================

    /// <summary>
    /// write(fd, buf): one struct vhost_msg or vhost_msg_v2 (vhost_chr_write_iter). Returns the message size (72) or
    /// -errno: -EINVAL for a malformed message, -EFAULT whenever the handler refuses it (the kernel maps every handler
    /// error to -EFAULT; <see cref="LastIotlbErrno"/> keeps the handler's own errno, e.g. EEXIST for an overlap).
    /// </summary>
    public long Write(ReadOnlySpan<byte> buf)
    {
        long r = WriteCore(buf, out var msg);
        Counters.Message(msg, r, LastIotlbErrno);
        return r;
    }

    long WriteCore(ReadOnlySpan<byte> buf, out IotlbMsg? parsed)
    {
        parsed = null;
        if (buf.Length < 4) return -Errno.EINVAL;
        uint type = BinaryPrimitives.ReadUInt32LittleEndian(buf);
        int pos = 4;
        uint asid = 0;
        if (type == VHOST_IOTLB_MSG) pos += 4;                     // hole before the 8-aligned union
        else if (type == VHOST_IOTLB_MSG_V2)
        {
            bool asidAcked;
            lock (mutex) asidAcked = HasBackendFeature(VHOST_BACKEND_F_IOTLB_ASID);
            if (asidAcked)
            {
                if (buf.Length < pos + 4) return -Errno.EINVAL;
                asid = BinaryPrimitives.ReadUInt32LittleEndian(buf[pos..]);
            }
            pos += 4;
        }
        else return -Errno.EINVAL;

        if (buf.Length < pos + IotlbMsgSize) return -Errno.EINVAL;
        var msg = IotlbMsg.Read(buf[pos..]);
        parsed = msg;
        if ((msg.Type == VHOST_IOTLB_UPDATE || msg.Type == VHOST_IOTLB_INVALIDATE) && msg.Size == 0) return -Errno.EINVAL;

        int rc = ProcessIotlbMsg(asid, msg);
        LastIotlbErrno = -rc;
        if (rc != 0) return -Errno.EFAULT;
        return type == VHOST_IOTLB_MSG ? MsgSize : MsgV2Size;
    }

    /// <summary>vhost_vdpa_process_iotlb_msg: 0 or -errno (before write() turns it into -EFAULT).</summary>
    int ProcessIotlbMsg(uint asid, IotlbMsg msg)
    {
        lock (mutex)
        {
            if (!owned) return -Errno.EPERM;
            // One address space: ASID 0 exists from the start, any other is not allocatable.
            if (asid >= AsNum) return -Errno.EINVAL;
            if (inBatch && batchAsid != asid) return -Errno.EINVAL;

            switch (msg.Type)
            {
                case VHOST_IOTLB_UPDATE:
                    return IotlbUpdate(msg);
                case VHOST_IOTLB_INVALIDATE:
                    // A range that wraps finds nothing (the interval tree's last < start).
                    if (msg.Iova + (msg.Size - 1) >= msg.Iova) Iotlb.RemoveOverlapping(msg.Iova, msg.Size);
                    if (!inBatch) Device.SetMap(Iotlb.Mappings);
                    return 0;
                case VHOST_IOTLB_BATCH_BEGIN:
                    batchAsid = asid;
                    inBatch = true;
                    return 0;
                case VHOST_IOTLB_BATCH_END:
                    // The device's map changes here; set_map's result is not checked by vhost-vdpa.
                    if (inBatch) Device.SetMap(Iotlb.Mappings);
                    inBatch = false;
                    return 0;
                default:
                    return -Errno.EINVAL;
            }
        }
    }

    int IotlbUpdate(IotlbMsg msg)
    {
        if (msg.Iova < IovaFirst || msg.Size == 0 || msg.Iova > ulong.MaxValue - msg.Size + 1 || msg.Iova + msg.Size - 1 > IovaLast)
            return -Errno.EINVAL;
        if (Iotlb.Overlaps(msg.Iova, msg.Size)) return -Errno.EEXIST;
        // perm is not validated (as in the kernel): a map without the needed permission makes the device's access fail.

        // vhost_vdpa_pa_map: pin whole pages from uaddr & PAGE_MASK, one map per physically contiguous chunk.
        ulong pages = (msg.Size + (msg.Iova & ~PageMask) + PageSize - 1) / PageSize;
        if (pages == 0 || pages > ulong.MaxValue / PageSize) return -Errno.EINVAL;
        var chunks = Translate(msg.Uaddr & PageMask, pages * PageSize);
        if (chunks is null) return -Errno.EFAULT;                      // pin_user_pages on unmapped memory
        ulong iova = msg.Iova & PageMask;
        var added = new List<(ulong, ulong)>();
        foreach (var (gpa, len) in chunks)
        {
            // Page rounding can reach a neighbour the exact range did not touch: refused, not overlapped.
            if (iova + (len - 1) < iova || !Iotlb.TryMap(iova, len, gpa, (MemoryAccess)msg.Perm))
            {
                foreach (var (s, l) in added) Iotlb.RemoveOverlapping(s, l);
                return -Errno.EEXIST;
            }
            added.Add((iova, len));
            if (!inBatch)
            {
                int r = Device.SetMap(Iotlb.Mappings);
                if (r != 0)
                {
                    foreach (var (s, l) in added) Iotlb.RemoveOverlapping(s, l);
                    Device.SetMap(Iotlb.Mappings);
                    return r;
                }
            }
            iova += len;
        }
        return 0;
    }

    /// <summary>uaddr range → (gpa, length) chunks, split where the VM's memslots are not contiguous; null when any
    /// byte is outside the VM's memory.</summary>
    List<(ulong Gpa, ulong Len)>? Translate(ulong uaddr, ulong size)
    {
        var result = new List<(ulong, ulong)>();
        ulong at = uaddr, left = size;
        while (left > 0)
        {
            if (!vm.PhysicalSpace.TryGpaOfHostAddress(at, out var gpa)) return null;
            var slot = vm.Memory.SlotAt(gpa);
            ulong len = Math.Min(left, slot.EndGpa - gpa);
            if (result.Count > 0 && result[^1].Item1 + result[^1].Item2 == gpa) result[^1] = (result[^1].Item1, result[^1].Item2 + len);
            else result.Add((gpa, len));
            at += len;
            left -= len;
        }
        return result;
    }

    // --- struct access helpers (copy_from_user / copy_to_user) --------------------------------------------------------

    static bool ReadU32(ReadOnlySpan<byte> a, int off, out uint v)
    {
        v = 0;
        if (a.Length < off + 4) return false;
        v = BinaryPrimitives.ReadUInt32LittleEndian(a[off..]);
        return true;
    }

    static bool ReadS32(ReadOnlySpan<byte> a, int off, out int v)
    {
        v = 0;
        if (a.Length < off + 4) return false;
        v = BinaryPrimitives.ReadInt32LittleEndian(a[off..]);
        return true;
    }

    static bool ReadU64(ReadOnlySpan<byte> a, int off, out ulong v)
    {
        v = 0;
        if (a.Length < off + 8) return false;
        v = BinaryPrimitives.ReadUInt64LittleEndian(a[off..]);
        return true;
    }

    static long Put(Span<byte> a, byte v) { a[0] = v; return 0; }
    static long WriteU16(Span<byte> a, ushort v) { if (a.Length < 2) return -Errno.EFAULT; BinaryPrimitives.WriteUInt16LittleEndian(a, v); return 0; }
    static long WriteU32(Span<byte> a, uint v) { if (a.Length < 4) return -Errno.EFAULT; BinaryPrimitives.WriteUInt32LittleEndian(a, v); return 0; }
    static long WriteU64(Span<byte> a, ulong v) { if (a.Length < 8) return -Errno.EFAULT; BinaryPrimitives.WriteUInt64LittleEndian(a, v); return 0; }
}

/// <summary>Ioctls and IOTLB messages seen by a vhost-vdpa file, with their outcomes.</summary>
public sealed class VhostCounters
{
    readonly Dictionary<string, long> ioctls = new(), failures = new(), messages = new();
    public long IotlbUpdates, IotlbInvalidates, Batches, IotlbRefused;

    public IReadOnlyDictionary<string, long> Ioctls { get { lock (ioctls) return new Dictionary<string, long>(ioctls); } }
    /// <summary>"IOCTL: ERRNO" or "IOTLB TYPE: ERRNO" → count.</summary>
    public IReadOnlyDictionary<string, long> Failures { get { lock (ioctls) return new Dictionary<string, long>(failures); } }

    internal void Ioctl(uint cmd, long r)
    {
        var name = Vhost.IoctlName(cmd);
        lock (ioctls)
        {
            ioctls[name] = ioctls.GetValueOrDefault(name) + 1;
            if (r < 0) { var k = name + ": " + Errno.Name((int)-r); failures[k] = failures.GetValueOrDefault(k) + 1; }
        }
    }

    internal void Message(IotlbMsg? msg, long r, int handlerErrno)
    {
        if (r < 0)
        {
            Interlocked.Increment(ref IotlbRefused);
            var k = "IOTLB " + (msg is { } m ? IotlbMsg.TypeName(m.Type) : "malformed") + ": " +
                    Errno.Name((int)-r) + (r == -Errno.EFAULT && handlerErrno > 0 ? $" ({Errno.Name(handlerErrno)})" : "");
            lock (ioctls) failures[k] = failures.GetValueOrDefault(k) + 1;
            return;
        }
        switch (msg!.Value.Type)
        {
            case Vhost.VHOST_IOTLB_UPDATE: Interlocked.Increment(ref IotlbUpdates); break;
            case Vhost.VHOST_IOTLB_INVALIDATE: Interlocked.Increment(ref IotlbInvalidates); break;
            case Vhost.VHOST_IOTLB_BATCH_END: Interlocked.Increment(ref Batches); break;
        }
    }
}
