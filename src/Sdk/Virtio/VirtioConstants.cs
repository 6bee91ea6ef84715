namespace VirtLab.Sdk.Virtio;

/// <summary>
/// Device-independent virtio feature bits (virtio 1.x, <c>include/uapi/linux/virtio_config.h</c>, <c>virtio_ring.h</c>).
/// Device-specific bits (0 … 23) are the device model's own; they combine with these in a <c>ulong</c>.
/// </summary>
[Flags]
public enum VirtioFeatures : ulong
{
    /// <summary>No feature.</summary>
    None = 0,
    /// <summary>VIRTIO_F_NOTIFY_ON_EMPTY (legacy).</summary>
    NotifyOnEmpty = 1UL << 24,
    /// <summary>VIRTIO_F_ANY_LAYOUT (legacy).</summary>
    AnyLayout = 1UL << 27,
    /// <summary>VIRTIO_RING_F_INDIRECT_DESC: the driver may use indirect descriptor tables.</summary>
    IndirectDesc = 1UL << 28,
    /// <summary>VIRTIO_RING_F_EVENT_IDX: used_event / avail_event replace the notification flags.</summary>
    EventIdx = 1UL << 29,
    /// <summary>VIRTIO_F_VERSION_1.</summary>
    Version1 = 1UL << 32,
    /// <summary>VIRTIO_F_ACCESS_PLATFORM (was IOMMU_PLATFORM): the device reaches memory through an IOMMU (an IOVA space).</summary>
    AccessPlatform = 1UL << 33,
    /// <summary>VIRTIO_F_RING_PACKED (not modelled: VirtLab has the split ring only).</summary>
    RingPacked = 1UL << 34,
    /// <summary>VIRTIO_F_IN_ORDER.</summary>
    InOrder = 1UL << 35,
    /// <summary>VIRTIO_F_ORDER_PLATFORM.</summary>
    OrderPlatform = 1UL << 36,
    /// <summary>VIRTIO_F_SR_IOV.</summary>
    SrIov = 1UL << 37,
    /// <summary>VIRTIO_F_NOTIFICATION_DATA.</summary>
    NotificationData = 1UL << 38,
    /// <summary>VIRTIO_F_RING_RESET.</summary>
    RingReset = 1UL << 40,
}

/// <summary>Device status bits (<c>VIRTIO_CONFIG_S_*</c>).</summary>
[Flags]
public enum VirtioDeviceStatus : byte
{
    /// <summary>Written by the driver to reset the device.</summary>
    Reset = 0,
    /// <summary>The driver noticed the device.</summary>
    Acknowledge = 1,
    /// <summary>The driver knows how to drive the device.</summary>
    Driver = 2,
    /// <summary>The driver is ready.</summary>
    DriverOk = 4,
    /// <summary>Feature negotiation is complete.</summary>
    FeaturesOk = 8,
    /// <summary>The device hit an error it cannot recover from (e.g. a broken virtqueue); the driver must reset it.</summary>
    NeedsReset = 0x40,
    /// <summary>The driver gave up on the device.</summary>
    Failed = 0x80,
}

/// <summary>Split-ring constants (<c>virtio_ring.h</c>).</summary>
public static class VirtqConst
{
    /// <summary>vring_desc.flags: the buffer continues via the next field.</summary>
    public const ushort DescFNext = 1;
    /// <summary>vring_desc.flags: device-writable buffer (otherwise device-readable).</summary>
    public const ushort DescFWrite = 2;
    /// <summary>vring_desc.flags: the buffer holds a table of descriptors.</summary>
    public const ushort DescFIndirect = 4;
    /// <summary>vring_used.flags: the device does not want kicks (ignored by the driver with EVENT_IDX).</summary>
    public const ushort UsedFNoNotify = 1;
    /// <summary>vring_avail.flags: the driver does not want interrupts (ignored by the device with EVENT_IDX).</summary>
    public const ushort AvailFNoInterrupt = 1;

    /// <summary>sizeof(struct vring_desc).</summary>
    public const int DescSize = 16;
    /// <summary>sizeof(struct vring_used_elem).</summary>
    public const int UsedElemSize = 8;
    /// <summary>Largest queue size of a split ring.</summary>
    public const int MaxQueueSize = 32768;
    /// <summary>Most entries an indirect table may have (its next fields are 16-bit).</summary>
    public const int MaxIndirectEntries = 65536;

    /// <summary><c>vring_need_event</c>: whether moving an index from <paramref name="old"/> to <paramref name="newIdx"/> crosses <paramref name="eventIdx"/>.</summary>
    public static bool NeedEvent(ushort eventIdx, ushort newIdx, ushort old) => (ushort)(newIdx - eventIdx - 1) < (ushort)(newIdx - old);
}
