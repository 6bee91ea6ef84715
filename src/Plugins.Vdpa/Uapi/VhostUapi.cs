using System.Buffers.Binary;

namespace VirtLab.Plugins.Vdpa.Uapi;

/// <summary>
/// include/uapi/linux/vhost.h and vhost_types.h, value for value: ioctl numbers, struct sizes and field offsets.
/// Every struct is little-endian on x86-64; the model reads and writes them as bytes.
/// </summary>
public static class Vhost
{
    public const byte VHOST_VIRTIO = 0xAF;

    // asm-generic/ioctl.h: dir(2) | size(14) | type(8) | nr(8).
    const uint IocNone = 0, IocWrite = 1, IocRead = 2;
    static uint Ioc(uint dir, uint nr, uint size) => dir << 30 | size << 16 | (uint)VHOST_VIRTIO << 8 | nr;
    static uint IO(uint nr) => Ioc(IocNone, nr, 0);
    static uint IOR(uint nr, uint size) => Ioc(IocRead, nr, size);
    static uint IOW(uint nr, uint size) => Ioc(IocWrite, nr, size);
    static uint IOWR(uint nr, uint size) => Ioc(IocRead | IocWrite, nr, size);

    // struct sizes
    public const int VringStateSize = 8;        // struct vhost_vring_state { u32 index; u32 num; }
    public const int VringFileSize = 8;         // struct vhost_vring_file { u32 index; s32 fd; }
    public const int VringAddrSize = 40;        // struct vhost_vring_addr { u32 index, flags; u64 desc, used, avail, log; }
    public const int MemoryHeaderSize = 8;      // struct vhost_memory { u32 nregions; u32 padding; regions[]; }
    public const int MemoryRegionSize = 32;     // struct vhost_memory_region { u64 gpa, size, uaddr, flags_padding; }
    public const int VdpaConfigHeaderSize = 8;  // struct vhost_vdpa_config { u32 off; u32 len; u8 buf[]; }
    public const int IovaRangeSize = 16;        // struct vhost_vdpa_iova_range { u64 first, last; }
    public const int IotlbMsgSize = 32;         // struct vhost_iotlb_msg { u64 iova, size, uaddr; u8 perm, type; } padded to 8
    public const int MsgSize = 72;              // struct vhost_msg { int type; union { iotlb; u8 padding[64]; } } (union 8-aligned)
    public const int MsgV2Size = 72;            // struct vhost_msg_v2 { u32 type; u32 asid; union { iotlb; u8 padding[64]; } }

    public static readonly uint VHOST_GET_FEATURES = IOR(0x00, 8);
    public static readonly uint VHOST_SET_FEATURES = IOW(0x00, 8);
    public static readonly uint VHOST_SET_OWNER = IO(0x01);
    public static readonly uint VHOST_RESET_OWNER = IO(0x02);
    public static readonly uint VHOST_SET_MEM_TABLE = IOW(0x03, MemoryHeaderSize);
    public static readonly uint VHOST_SET_LOG_BASE = IOW(0x04, 8);
    public static readonly uint VHOST_SET_LOG_FD = IOW(0x07, 4);
    public static readonly uint VHOST_SET_VRING_NUM = IOW(0x10, VringStateSize);
    public static readonly uint VHOST_SET_VRING_ADDR = IOW(0x11, VringAddrSize);
    public static readonly uint VHOST_SET_VRING_BASE = IOW(0x12, VringStateSize);
    public static readonly uint VHOST_GET_VRING_BASE = IOWR(0x12, VringStateSize);
    public static readonly uint VHOST_SET_VRING_KICK = IOW(0x20, VringFileSize);
    public static readonly uint VHOST_SET_VRING_CALL = IOW(0x21, VringFileSize);
    public static readonly uint VHOST_SET_VRING_ERR = IOW(0x22, VringFileSize);
    public static readonly uint VHOST_SET_BACKEND_FEATURES = IOW(0x25, 8);
    public static readonly uint VHOST_GET_BACKEND_FEATURES = IOR(0x26, 8);

    public static readonly uint VHOST_VDPA_GET_DEVICE_ID = IOR(0x70, 4);
    public static readonly uint VHOST_VDPA_GET_STATUS = IOR(0x71, 1);
    public static readonly uint VHOST_VDPA_SET_STATUS = IOW(0x72, 1);
    public static readonly uint VHOST_VDPA_GET_CONFIG = IOR(0x73, VdpaConfigHeaderSize);
    public static readonly uint VHOST_VDPA_SET_CONFIG = IOW(0x74, VdpaConfigHeaderSize);
    public static readonly uint VHOST_VDPA_SET_VRING_ENABLE = IOW(0x75, VringStateSize);
    public static readonly uint VHOST_VDPA_GET_VRING_NUM = IOR(0x76, 2);
    public static readonly uint VHOST_VDPA_SET_CONFIG_CALL = IOW(0x77, 4);
    public static readonly uint VHOST_VDPA_GET_IOVA_RANGE = IOR(0x78, IovaRangeSize);
    public static readonly uint VHOST_VDPA_GET_CONFIG_SIZE = IOR(0x79, 4);
    public static readonly uint VHOST_VDPA_GET_AS_NUM = IOR(0x7A, 4);
    public static readonly uint VHOST_VDPA_GET_VRING_GROUP = IOWR(0x7B, VringStateSize);
    public static readonly uint VHOST_VDPA_SET_GROUP_ASID = IOW(0x7C, VringStateSize);
    public static readonly uint VHOST_VDPA_SUSPEND = IO(0x7D);
    public static readonly uint VHOST_VDPA_RESUME = IO(0x7E);
    public static readonly uint VHOST_VDPA_GET_VRING_DESC_GROUP = IOWR(0x7F, VringStateSize);
    public static readonly uint VHOST_VDPA_GET_VQS_COUNT = IOR(0x80, 4);
    public static readonly uint VHOST_VDPA_GET_GROUP_NUM = IOR(0x81, 4);
    public static readonly uint VHOST_VDPA_GET_VRING_SIZE = IOWR(0x82, VringStateSize);

    /// <summary>VHOST_FILE_UNBIND: an fd of -1 unbinds a kick/call eventfd.</summary>
    public const int VHOST_FILE_UNBIND = -1;
    public const int VHOST_VRING_F_LOG = 0;

    // vhost_types.h: IOTLB messages
    public const uint VHOST_IOTLB_MSG = 0x1;
    public const uint VHOST_IOTLB_MSG_V2 = 0x2;
    public const byte VHOST_IOTLB_MISS = 1, VHOST_IOTLB_UPDATE = 2, VHOST_IOTLB_INVALIDATE = 3,
        VHOST_IOTLB_ACCESS_FAIL = 4, VHOST_IOTLB_BATCH_BEGIN = 5, VHOST_IOTLB_BATCH_END = 6;
    public const byte VHOST_ACCESS_RO = 0x1, VHOST_ACCESS_WO = 0x2, VHOST_ACCESS_RW = 0x3;

    // Backend features (bit numbers)
    public const int VHOST_BACKEND_F_IOTLB_MSG_V2 = 0x1, VHOST_BACKEND_F_IOTLB_BATCH = 0x2, VHOST_BACKEND_F_IOTLB_ASID = 0x3,
        VHOST_BACKEND_F_SUSPEND = 0x4, VHOST_BACKEND_F_RESUME = 0x5, VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK = 0x6,
        VHOST_BACKEND_F_DESC_ASID = 0x7, VHOST_BACKEND_F_IOTLB_PERSIST = 0x8;

    /// <summary>The name of a vhost / vhost-vdpa ioctl number, or its hex value.</summary>
    public static string IoctlName(uint cmd)
    {
        foreach (var f in typeof(Vhost).GetFields())
            if (f.IsStatic && f.IsInitOnly && f.FieldType == typeof(uint) && (uint)f.GetValue(null)! == cmd)
                return f.Name;
        return $"0x{cmd:x8}";
    }

    /// <summary>Names of the set backend-feature bits.</summary>
    public static string BackendFeatureNames(ulong features)
    {
        string[] names = ["?", "IOTLB_MSG_V2", "IOTLB_BATCH", "IOTLB_ASID", "SUSPEND", "RESUME", "ENABLE_AFTER_DRIVER_OK", "DESC_ASID", "IOTLB_PERSIST"];
        var parts = new List<string>();
        for (int b = 0; b < 64; b++)
            if ((features & 1UL << b) != 0) parts.Add(b < names.Length && b > 0 ? names[b] : "bit" + b);
        return parts.Count == 0 ? "none" : string.Join(" ", parts);
    }
}

/// <summary>struct vhost_iotlb_msg, as written to the vhost-vdpa fd inside a struct vhost_msg_v2.</summary>
public readonly record struct IotlbMsg(ulong Iova, ulong Size, ulong Uaddr, byte Perm, byte Type)
{
    public static IotlbMsg Update(ulong iova, ulong size, ulong uaddr, byte perm) => new(iova, size, uaddr, perm, Vhost.VHOST_IOTLB_UPDATE);
    public static IotlbMsg Invalidate(ulong iova, ulong size) => new(iova, size, 0, 0, Vhost.VHOST_IOTLB_INVALIDATE);
    public static IotlbMsg BatchBegin() => new(0, 0, 0, 0, Vhost.VHOST_IOTLB_BATCH_BEGIN);
    public static IotlbMsg BatchEnd() => new(0, 0, 0, 0, Vhost.VHOST_IOTLB_BATCH_END);

    /// <summary>Encodes a struct vhost_msg_v2 (72 bytes) carrying this message; asid goes in the second u32.</summary>
    public byte[] ToMsgV2(uint asid = 0)
    {
        var b = new byte[Vhost.MsgV2Size];
        BinaryPrimitives.WriteUInt32LittleEndian(b, Vhost.VHOST_IOTLB_MSG_V2);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), asid);
        Write(b.AsSpan(8));
        return b;
    }

    public void Write(Span<byte> d)
    {
        BinaryPrimitives.WriteUInt64LittleEndian(d, Iova);
        BinaryPrimitives.WriteUInt64LittleEndian(d[8..], Size);
        BinaryPrimitives.WriteUInt64LittleEndian(d[16..], Uaddr);
        d[24] = Perm;
        d[25] = Type;
    }

    public static IotlbMsg Read(ReadOnlySpan<byte> s) => new(
        BinaryPrimitives.ReadUInt64LittleEndian(s), BinaryPrimitives.ReadUInt64LittleEndian(s[8..]),
        BinaryPrimitives.ReadUInt64LittleEndian(s[16..]), s[24], s[25]);

    public static string TypeName(byte type) => type switch
    {
        Vhost.VHOST_IOTLB_MISS => "MISS", Vhost.VHOST_IOTLB_UPDATE => "UPDATE", Vhost.VHOST_IOTLB_INVALIDATE => "INVALIDATE",
        Vhost.VHOST_IOTLB_ACCESS_FAIL => "ACCESS_FAIL", Vhost.VHOST_IOTLB_BATCH_BEGIN => "BATCH_BEGIN",
        Vhost.VHOST_IOTLB_BATCH_END => "BATCH_END", _ => "type " + type,
    };

    public override string ToString() => $"{TypeName(Type)} iova=0x{Iova:x} size=0x{Size:x} uaddr=0x{Uaddr:x} perm={Perm}";
}
