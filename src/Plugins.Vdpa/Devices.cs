using System.Buffers.Binary;
using VirtLab.Plugins.Vdpa.Uapi;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;

namespace VirtLab.Plugins.Vdpa;

/// <summary>
/// vdpa_sim's net device: RX = queue 0, TX = queue 1; every frame the driver transmits comes back on its receive
/// queue. Config space (struct virtio_net_config): MAC, status (link up), max_virtqueue_pairs 1, MTU.
/// </summary>
public sealed partial class VdpaNetDevice : VdpaDevice
{
    public const int RxQueue = 0, TxQueue = 1;

    /// <summary>What the device offers.</summary>
    public static readonly ulong Features = Bit(F_ANY_LAYOUT) | Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) |
        Bit(RING_F_INDIRECT_DESC) | Bit(RING_F_EVENT_IDX) | Bit(VirtioNet.F_MAC) | Bit(VirtioNet.F_MTU) | Bit(VirtioNet.F_STATUS);

    public VdpaNetDevice(string name = "vdpa-net", byte[]? mac = null, ushort mtu = 1500)
        : base(name, ID_NET, 2, Features, VirtioNet.ConfigSize)
    {
        if (mac is not null && mac.Length != 6) throw new ArgumentException($"a MAC address has 6 bytes, not {mac.Length}", nameof(mac));
        if (mac is not null && (mac[0] & 1) != 0) throw new ArgumentException($"MAC {FormatMac(mac)} is a multicast address", nameof(mac));
        if (mtu < 68) throw new ArgumentOutOfRangeException(nameof(mtu), mtu, "the MTU must be at least 68 (RFC 791)");
        Mac = mac ?? [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];
        Mtu = mtu;
        ResetConfig();
    }

    public byte[] Mac { get; }
    public ushort Mtu { get; }

    protected override void ResetConfig()
    {
        Config.AsSpan().Clear();
        Mac.CopyTo(Config, VirtioNet.ConfigMac);
        BinaryPrimitives.WriteUInt16LittleEndian(Config.AsSpan(VirtioNet.ConfigStatus), VirtioNet.S_LINK_UP);
        BinaryPrimitives.WriteUInt16LittleEndian(Config.AsSpan(VirtioNet.ConfigMaxVirtqueuePairs), 1);
        BinaryPrimitives.WriteUInt16LittleEndian(Config.AsSpan(VirtioNet.ConfigMtu), Mtu);
    }

    public static string FormatMac(ReadOnlySpan<byte> mac) => string.Join(":", mac.ToArray().Select(b => b.ToString("x2")));
}

/// <summary>
/// vdpa_sim's block device: one request queue over a RAM disk (128 MiB by default). Config space
/// (struct virtio_blk_config): capacity in 512-byte sectors, size_max, seg_max, blk_size, topology, num_queues.
/// </summary>
public sealed partial class VdpaBlockDevice : VdpaDevice
{
    public const uint SizeMax = 0x1000 * 16, SegMax = 128;
    public static readonly byte[] DefaultId = "vdpa_blk_sim"u8.ToArray();

    public static readonly ulong Features = Bit(F_ANY_LAYOUT) | Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) |
        Bit(RING_F_INDIRECT_DESC) | Bit(RING_F_EVENT_IDX) | Bit(VirtioBlk.F_SIZE_MAX) | Bit(VirtioBlk.F_SEG_MAX) |
        Bit(VirtioBlk.F_BLK_SIZE) | Bit(VirtioBlk.F_TOPOLOGY) | Bit(VirtioBlk.F_FLUSH);

    readonly byte[] disk;

    public VdpaBlockDevice(string name = "vdpa-blk", long capacityBytes = 128L << 20)
        : base(name, ID_BLOCK, 1, Features, VirtioBlk.ConfigSize)
    {
        if (capacityBytes <= 0 || capacityBytes % VirtioBlk.SectorSize != 0 || capacityBytes > Array.MaxLength)
            throw new ArgumentOutOfRangeException(nameof(capacityBytes), capacityBytes,
                $"the RAM disk must be a positive multiple of 512 bytes, at most {Array.MaxLength} bytes");
        disk = new byte[capacityBytes];
        // vdpa_sim allocates its buffer up front: touch every page now, not on the first request.
        for (long off = 0; off < disk.LongLength; off += 4096) disk[off] = 0;
        ResetConfig();
    }

    public long CapacityBytes => disk.LongLength;
    public ulong CapacitySectors => (ulong)disk.LongLength >> VirtioBlk.SectorShift;

    /// <summary>The RAM disk's bytes (for checking what the device wrote).</summary>
    public ReadOnlySpan<byte> Disk => disk;

    protected override void ResetConfig()
    {
        var c = Config.AsSpan();
        c.Clear();
        BinaryPrimitives.WriteUInt64LittleEndian(c[VirtioBlk.ConfigCapacity..], CapacitySectors);
        BinaryPrimitives.WriteUInt32LittleEndian(c[VirtioBlk.ConfigSizeMax..], SizeMax);
        BinaryPrimitives.WriteUInt32LittleEndian(c[VirtioBlk.ConfigSegMax..], SegMax);
        BinaryPrimitives.WriteUInt32LittleEndian(c[VirtioBlk.ConfigBlkSize..], VirtioBlk.SectorSize);
        c[VirtioBlk.ConfigPhysicalBlockExp] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(c[VirtioBlk.ConfigMinIoSize..], 1);
        BinaryPrimitives.WriteUInt32LittleEndian(c[VirtioBlk.ConfigOptIoSize..], 1);
        BinaryPrimitives.WriteUInt16LittleEndian(c[VirtioBlk.ConfigNumQueues..], 1);
    }
}
