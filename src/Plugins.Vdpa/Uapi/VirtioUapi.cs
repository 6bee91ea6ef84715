namespace VirtLab.Plugins.Vdpa.Uapi;

/// <summary>virtio_config.h / virtio_ids.h / virtio_ring.h: status bits, transport feature bits, device ids.</summary>
public static class VirtioConfig
{
    public const byte ACKNOWLEDGE = 1, DRIVER = 2, DRIVER_OK = 4, FEATURES_OK = 8, NEEDS_RESET = 0x40, FAILED = 0x80;

    public const int F_NOTIFY_ON_EMPTY = 24, F_ANY_LAYOUT = 27, RING_F_INDIRECT_DESC = 28, RING_F_EVENT_IDX = 29,
        F_VERSION_1 = 32, F_ACCESS_PLATFORM = 33, F_RING_PACKED = 34, F_IN_ORDER = 35, F_ORDER_PLATFORM = 36;

    public const uint ID_NET = 1, ID_BLOCK = 2;

    public static ulong Bit(int b) => 1UL << b;

    public static string StatusName(byte s)
    {
        if (s == 0) return "RESET";
        var parts = new List<string>();
        if ((s & ACKNOWLEDGE) != 0) parts.Add("ACKNOWLEDGE");
        if ((s & DRIVER) != 0) parts.Add("DRIVER");
        if ((s & FEATURES_OK) != 0) parts.Add("FEATURES_OK");
        if ((s & DRIVER_OK) != 0) parts.Add("DRIVER_OK");
        if ((s & NEEDS_RESET) != 0) parts.Add("NEEDS_RESET");
        if ((s & FAILED) != 0) parts.Add("FAILED");
        var rest = s & ~(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK | NEEDS_RESET | FAILED);
        if (rest != 0) parts.Add($"0x{rest:x2}");
        return string.Join("|", parts);
    }

    /// <summary>Names of the set feature bits for a device type (transport bits for every type).</summary>
    public static string FeatureNames(ulong features, uint deviceId)
    {
        var parts = new List<string>();
        for (int b = 0; b < 64; b++)
            if ((features & 1UL << b) != 0) parts.Add(FeatureName(b, deviceId));
        return parts.Count == 0 ? "none" : string.Join(" ", parts);
    }

    public static string FeatureName(int bit, uint deviceId) => bit switch
    {
        F_NOTIFY_ON_EMPTY => "NOTIFY_ON_EMPTY", F_ANY_LAYOUT => "ANY_LAYOUT", RING_F_INDIRECT_DESC => "INDIRECT_DESC",
        RING_F_EVENT_IDX => "EVENT_IDX", F_VERSION_1 => "VERSION_1", F_ACCESS_PLATFORM => "ACCESS_PLATFORM",
        F_RING_PACKED => "RING_PACKED", F_IN_ORDER => "IN_ORDER", F_ORDER_PLATFORM => "ORDER_PLATFORM",
        _ when deviceId == ID_NET => VirtioNet.FeatureName(bit),
        _ when deviceId == ID_BLOCK => VirtioBlk.FeatureName(bit),
        _ => "bit" + bit,
    };
}

/// <summary>virtio_net.h: feature bits and struct virtio_net_config offsets.</summary>
public static class VirtioNet
{
    public const int F_CSUM = 0, F_GUEST_CSUM = 1, F_CTRL_GUEST_OFFLOADS = 2, F_MTU = 3, F_MAC = 5, F_GUEST_TSO4 = 7,
        F_GUEST_TSO6 = 8, F_GUEST_ECN = 9, F_GUEST_UFO = 10, F_HOST_TSO4 = 11, F_HOST_TSO6 = 12, F_HOST_ECN = 13,
        F_HOST_UFO = 14, F_MRG_RXBUF = 15, F_STATUS = 16, F_CTRL_VQ = 17, F_CTRL_RX = 18, F_CTRL_VLAN = 19,
        F_GUEST_ANNOUNCE = 21, F_MQ = 22, F_CTRL_MAC_ADDR = 23, F_SPEED_DUPLEX = 63;

    public const ushort S_LINK_UP = 1, S_ANNOUNCE = 2;

    // struct virtio_net_config
    public const int ConfigMac = 0, ConfigStatus = 6, ConfigMaxVirtqueuePairs = 8, ConfigMtu = 10, ConfigSpeed = 12,
        ConfigDuplex = 16, ConfigRssMaxKeySize = 17, ConfigRssMaxIndirectionTableLength = 18, ConfigSupportedHashTypes = 20;
    public const int ConfigSize = 24;

    /// <summary>struct virtio_net_hdr_v1 (VERSION_1: num_buffers always present): 12 bytes.</summary>
    public const int HdrV1Size = 12;

    public static string FeatureName(int bit) => bit switch
    {
        F_CSUM => "CSUM", F_GUEST_CSUM => "GUEST_CSUM", F_CTRL_GUEST_OFFLOADS => "CTRL_GUEST_OFFLOADS", F_MTU => "MTU",
        F_MAC => "MAC", F_GUEST_TSO4 => "GUEST_TSO4", F_GUEST_TSO6 => "GUEST_TSO6", F_GUEST_ECN => "GUEST_ECN",
        F_GUEST_UFO => "GUEST_UFO", F_HOST_TSO4 => "HOST_TSO4", F_HOST_TSO6 => "HOST_TSO6", F_HOST_ECN => "HOST_ECN",
        F_HOST_UFO => "HOST_UFO", F_MRG_RXBUF => "MRG_RXBUF", F_STATUS => "STATUS", F_CTRL_VQ => "CTRL_VQ",
        F_CTRL_RX => "CTRL_RX", F_CTRL_VLAN => "CTRL_VLAN", F_GUEST_ANNOUNCE => "GUEST_ANNOUNCE", F_MQ => "MQ",
        F_CTRL_MAC_ADDR => "CTRL_MAC_ADDR", F_SPEED_DUPLEX => "SPEED_DUPLEX", _ => "net bit" + bit,
    };
}

/// <summary>virtio_blk.h: feature bits, request types, status values and struct virtio_blk_config offsets.</summary>
public static class VirtioBlk
{
    public const int F_SIZE_MAX = 1, F_SEG_MAX = 2, F_GEOMETRY = 4, F_RO = 5, F_BLK_SIZE = 6, F_FLUSH = 9,
        F_TOPOLOGY = 10, F_CONFIG_WCE = 11, F_MQ = 12, F_DISCARD = 13, F_WRITE_ZEROES = 14, F_SECURE_ERASE = 16, F_ZONED = 17;

    public const uint T_IN = 0, T_OUT = 1, T_FLUSH = 4, T_GET_ID = 8;
    public const byte S_OK = 0, S_IOERR = 1, S_UNSUPP = 2;
    public const int IdBytes = 20;
    public const int SectorShift = 9, SectorSize = 512;

    /// <summary>struct virtio_blk_outhdr { le32 type; le32 ioprio; le64 sector; }</summary>
    public const int OutHdrSize = 16;

    // struct virtio_blk_config (current uAPI, 96 bytes)
    public const int ConfigCapacity = 0, ConfigSizeMax = 8, ConfigSegMax = 12, ConfigGeometry = 16, ConfigBlkSize = 20,
        ConfigPhysicalBlockExp = 24, ConfigAlignmentOffset = 25, ConfigMinIoSize = 26, ConfigOptIoSize = 28,
        ConfigWriteback = 32, ConfigNumQueues = 34, ConfigMaxDiscardSectors = 36, ConfigMaxDiscardSeg = 40,
        ConfigDiscardSectorAlignment = 44, ConfigMaxWriteZeroesSectors = 48, ConfigMaxWriteZeroesSeg = 52,
        ConfigWriteZeroesMayUnmap = 56, ConfigMaxSecureEraseSectors = 60, ConfigMaxSecureEraseSeg = 64,
        ConfigSecureEraseSectorAlignment = 68, ConfigZoned = 72;
    public const int ConfigSize = 96;

    public static string FeatureName(int bit) => bit switch
    {
        F_SIZE_MAX => "SIZE_MAX", F_SEG_MAX => "SEG_MAX", F_GEOMETRY => "GEOMETRY", F_RO => "RO", F_BLK_SIZE => "BLK_SIZE",
        F_FLUSH => "FLUSH", F_TOPOLOGY => "TOPOLOGY", F_CONFIG_WCE => "CONFIG_WCE", F_MQ => "MQ", F_DISCARD => "DISCARD",
        F_WRITE_ZEROES => "WRITE_ZEROES", F_SECURE_ERASE => "SECURE_ERASE", F_ZONED => "ZONED", _ => "blk bit" + bit,
    };

    public static string RequestName(uint type) => type switch
    {
        T_IN => "IN", T_OUT => "OUT", T_FLUSH => "FLUSH", T_GET_ID => "GET_ID", _ => "type " + type,
    };
}
