using System.Buffers.Binary;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Native;
using static VirtLab.Plugins.Vdpa.Uapi.Vhost;

namespace VirtLab.Plugins.Vdpa;

/// <summary>A vhost-vdpa ioctl or IOTLB write the model refused: the errno, the call and what the kernel checked.</summary>
public sealed class VhostException(int errno, string call, string message) : LibcException(errno, call, null, message);

/// <summary>
/// Typed door to the same model: each method builds the uAPI struct, goes through <see cref="Ioctl"/> or
/// <see cref="Write"/>, and throws <see cref="VhostException"/> with the errno and the reason on failure.
/// </summary>
public sealed partial class VhostVdpa
{
    long Call(uint cmd, Span<byte> arg, Func<int, string?>? why = null)
    {
        long r = Ioctl(cmd, arg);
        if (r < 0)
        {
            int e = (int)-r;
            var name = IoctlName(cmd);
            throw new VhostException(e, name, $"{name} failed: {Errno.Name(e)}" + (why?.Invoke(e) is { Length: > 0 } w ? $" ({w})" : ""));
        }
        return r;
    }

    public void SetOwner() => Call(VHOST_SET_OWNER, [], e => e == Errno.EBUSY ? "the device already has an owner" : null);

    public uint GetDeviceId() { Span<byte> b = stackalloc byte[4]; Call(VHOST_VDPA_GET_DEVICE_ID, b); return BinaryPrimitives.ReadUInt32LittleEndian(b); }

    public byte GetStatus() { Span<byte> b = stackalloc byte[1]; Call(VHOST_VDPA_GET_STATUS, b); return b[0]; }

    public void SetStatus(byte status)
    {
        Span<byte> b = [status];
        Call(VHOST_VDPA_SET_STATUS, b, e => e == Errno.EINVAL
            ? $"status 0x{status:x2} would clear bits of {VirtioConfig.StatusName(Device.GetStatus())}; only a reset to 0 clears bits"
            : null);
    }

    /// <summary>Adds <paramref name="bits"/> to the current status (the driver's usual read-modify-write).</summary>
    public void AddStatus(byte bits) => SetStatus((byte)(GetStatus() | bits));

    public void Reset() => SetStatus(0);

    public ulong GetFeatures() { Span<byte> b = stackalloc byte[8]; Call(VHOST_GET_FEATURES, b); return BinaryPrimitives.ReadUInt64LittleEndian(b); }

    public void SetFeatures(ulong features)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, features);
        Call(VHOST_SET_FEATURES, b, e => e switch
        {
            Errno.EBUSY => "features are frozen once FEATURES_OK is set",
            Errno.EINVAL when (features & ~FeatureMask) != 0 =>
                $"bits {VirtioConfig.FeatureNames(features & ~FeatureMask, Device.DeviceId)} are not in what vhost-vdpa allows for this device type",
            Errno.EINVAL => "the device refused the set (it requires ACCESS_PLATFORM)",
            _ => null,
        });
    }

    public ulong GetBackendFeatures() { Span<byte> b = stackalloc byte[8]; Call(VHOST_GET_BACKEND_FEATURES, b); return BinaryPrimitives.ReadUInt64LittleEndian(b); }

    public void SetBackendFeatures(ulong features)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, features);
        Call(VHOST_SET_BACKEND_FEATURES, b, e => $"offered: {BackendFeatureNames(OfferedBackendFeatures)}");
    }

    public byte[] GetConfig(uint offset, uint length)
    {
        var b = new byte[VdpaConfigHeaderSize + (int)Math.Min(length, 1u << 20)];
        BinaryPrimitives.WriteUInt32LittleEndian(b, offset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), length);
        Call(VHOST_VDPA_GET_CONFIG, b, e => ConfigWhy(offset, length));
        return b[VdpaConfigHeaderSize..];
    }

    public void SetConfig(uint offset, ReadOnlySpan<byte> data)
    {
        var b = new byte[VdpaConfigHeaderSize + data.Length];
        BinaryPrimitives.WriteUInt32LittleEndian(b, offset);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), (uint)data.Length);
        data.CopyTo(b.AsSpan(VdpaConfigHeaderSize));
        uint len = (uint)data.Length;
        Call(VHOST_VDPA_SET_CONFIG, b, e => ConfigWhy(offset, len));
    }

    string ConfigWhy(uint off, uint len) => ConfigValidate(off, len) switch
    {
        -Errno.E2BIG => $"offset {off} + length {len} runs past the {Device.ConfigSize}-byte config space (E2BIG inside, EINVAL to userspace)",
        -Errno.EINVAL => len == 0 ? "length 0" : $"offset {off} is past the {Device.ConfigSize}-byte config space",
        _ => "",
    };

    public ushort GetVringNum() { Span<byte> b = stackalloc byte[2]; Call(VHOST_VDPA_GET_VRING_NUM, b); return BinaryPrimitives.ReadUInt16LittleEndian(b); }
    public uint GetConfigSize() { Span<byte> b = stackalloc byte[4]; Call(VHOST_VDPA_GET_CONFIG_SIZE, b); return BinaryPrimitives.ReadUInt32LittleEndian(b); }
    public uint GetVqsCount() { Span<byte> b = stackalloc byte[4]; Call(VHOST_VDPA_GET_VQS_COUNT, b); return BinaryPrimitives.ReadUInt32LittleEndian(b); }

    public (ulong First, ulong Last) GetIovaRange()
    {
        Span<byte> b = stackalloc byte[IovaRangeSize];
        Call(VHOST_VDPA_GET_IOVA_RANGE, b);
        return (BinaryPrimitives.ReadUInt64LittleEndian(b), BinaryPrimitives.ReadUInt64LittleEndian(b[8..]));
    }

    public void Suspend() => Call(VHOST_VDPA_SUSPEND, []);
    public void Resume() => Call(VHOST_VDPA_RESUME, []);

    Func<int, string> VringWhy(uint idx) => e => e switch
    {
        Errno.ENOBUFS => $"queue {idx} does not exist; the device has {Device.Nvqs}",
        Errno.EBUSY => $"status is {VirtioConfig.StatusName(Device.GetStatus())}; vrings are programmable between FEATURES_OK and DRIVER_OK, with the queue disabled",
        Errno.EPERM => "SET_OWNER first",
        _ => "",
    };

    long VringState(uint cmd, uint idx, uint num, Func<int, string>? more = null)
    {
        Span<byte> b = stackalloc byte[VringStateSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, idx);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], num);
        Call(cmd, b, e => (more?.Invoke(e) is { Length: > 0 } m ? m : VringWhy(idx)(e)));
        return BinaryPrimitives.ReadUInt32LittleEndian(b[4..]);
    }

    public void SetVringNum(uint idx, uint num) =>
        VringState(VHOST_SET_VRING_NUM, idx, num, e => e == Errno.EINVAL ? $"num {num} must be a power of two in 1..32768" : "");

    public void SetVringBase(uint idx, uint num) =>
        VringState(VHOST_SET_VRING_BASE, idx, num, e => e == Errno.EINVAL ? $"base {num} exceeds 0xffff" : "");

    public ushort GetVringBase(uint idx) => (ushort)VringState(VHOST_GET_VRING_BASE, idx, 0);

    public void SetVringEnable(uint idx, bool enable) => VringState(VHOST_VDPA_SET_VRING_ENABLE, idx, enable ? 1u : 0u);

    public void SetVringAddr(uint idx, ulong desc, ulong avail, ulong used, ulong log = 0, uint flags = 0)
    {
        Span<byte> b = stackalloc byte[VringAddrSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, idx);
        BinaryPrimitives.WriteUInt32LittleEndian(b[4..], flags);
        BinaryPrimitives.WriteUInt64LittleEndian(b[8..], desc);
        BinaryPrimitives.WriteUInt64LittleEndian(b[16..], used);
        BinaryPrimitives.WriteUInt64LittleEndian(b[24..], avail);
        BinaryPrimitives.WriteUInt64LittleEndian(b[32..], log);
        Call(VHOST_SET_VRING_ADDR, b, e => e switch
        {
            Errno.EINVAL => $"avail 0x{avail:x} must be 2-aligned, used 0x{used:x} and log 0x{log:x} 4-aligned",
            Errno.EOPNOTSUPP => $"flags 0x{flags:x}: only VHOST_VRING_F_LOG exists",
            _ => VringWhy(idx)(e),
        });
    }

    void VringFile(uint cmd, uint idx, int fd)
    {
        Span<byte> b = stackalloc byte[VringFileSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, idx);
        BinaryPrimitives.WriteInt32LittleEndian(b[4..], fd);
        Call(cmd, b, e => e switch
        {
            Errno.EBADF => $"fd {fd} is not open",
            Errno.EINVAL => $"fd {fd} is not an eventfd",
            _ => VringWhy(idx)(e),
        });
    }

    public void SetVringKick(uint idx, int fd) => VringFile(VHOST_SET_VRING_KICK, idx, fd);
    public void SetVringCall(uint idx, int fd) => VringFile(VHOST_SET_VRING_CALL, idx, fd);

    /// <summary>VHOST_SET_MEM_TABLE with (guest_phys_addr, memory_size, userspace_addr) regions.</summary>
    public void SetMemTable(IReadOnlyList<(ulong Gpa, ulong Size, ulong Uaddr)> regions)
    {
        var b = new byte[MemoryHeaderSize + regions.Count * MemoryRegionSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)regions.Count);
        for (int i = 0; i < regions.Count; i++)
        {
            var r = b.AsSpan(MemoryHeaderSize + i * MemoryRegionSize);
            BinaryPrimitives.WriteUInt64LittleEndian(r, regions[i].Gpa);
            BinaryPrimitives.WriteUInt64LittleEndian(r[8..], regions[i].Size);
            BinaryPrimitives.WriteUInt64LittleEndian(r[16..], regions[i].Uaddr);
        }
        Call(VHOST_SET_MEM_TABLE, b, e => e switch
        {
            Errno.E2BIG => $"{regions.Count} regions; at most {MaxMemRegions}",
            Errno.EFAULT => "a region is empty, overlaps another, or is not entirely inside the VM's memory",
            Errno.EPERM => "SET_OWNER first",
            _ => "",
        });
    }

    /// <summary>Writes one IOTLB message (as a struct vhost_msg_v2) and throws with the handler's reason on refusal.</summary>
    public void Send(IotlbMsg msg, uint asid = 0)
    {
        long r = Write(msg.ToMsgV2(asid));
        if (r >= 0) return;
        int e = (int)-r, inner = e == Errno.EFAULT ? LastIotlbErrno : e;
        var why = inner switch
        {
            Errno.EEXIST => "the range overlaps an existing mapping",
            Errno.EINVAL when msg.Size == 0 => "size 0",
            Errno.EINVAL => $"the range [0x{msg.Iova:x}, +0x{msg.Size:x}) overflows or leaves the IOVA range, or the message/ASID is invalid",
            Errno.EFAULT => $"uaddr 0x{msg.Uaddr:x} + 0x{msg.Size:x} is not entirely inside the VM's memory",
            Errno.EPERM => "SET_OWNER first",
            Errno.ENOSPC => $"the device map holds at most {VdpaDevice.MaxIotlbEntries} entries",
            _ => Errno.Name(inner),
        };
        throw new VhostException(inner, "write(IOTLB " + IotlbMsg.TypeName(msg.Type) + ")",
            $"IOTLB {IotlbMsg.TypeName(msg.Type)} refused: write returned {Errno.Name(e)}" +
            (inner != e ? $" (handler: {Errno.Name(inner)}, {why})" : $" ({why})"));
    }

    /// <summary>IOTLB UPDATE mapping [iova, iova+size) to the VM's guest-physical <paramref name="gpa"/> (its host address is the uaddr).</summary>
    public void Map(ulong iova, ulong size, ulong gpa, byte perm = VHOST_ACCESS_RW) =>
        Send(IotlbMsg.Update(iova, size, (ulong)vm.Memory.HostAddress(gpa), perm));

    public void Unmap(ulong iova, ulong size) => Send(IotlbMsg.Invalidate(iova, size));
    public void BatchBegin() => Send(IotlbMsg.BatchBegin());
    public void BatchEnd() => Send(IotlbMsg.BatchEnd());
}
