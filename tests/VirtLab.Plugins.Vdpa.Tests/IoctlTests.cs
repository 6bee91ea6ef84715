using System.Buffers.Binary;
using VirtLab.Plugins.Vdpa;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Virtio;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;
using Xunit;
using static VirtLab.Plugins.Vdpa.Uapi.Vhost;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;

namespace VirtLab.Plugins.Vdpa.Tests;

/// <summary>A simulator VM plus a vhost-vdpa file over a fresh device; fds 100.. are eventfds, 3 is an open non-eventfd.</summary>
public sealed class Fixture : IDisposable
{
    public readonly Vm Vm = Vm.Create(8.MiB(), backend: Backend.Sim);
    public readonly VhostVdpa V;
    public readonly EventNotifier Kick = new("test kick"), Call = new("test call");

    public Fixture(VdpaDevice? device = null)
    {
        V = new VhostVdpa(device ?? new VdpaNetDevice(), Vm, fd => fd switch
        {
            100 => (0, Kick),
            101 => (0, Call),
            3 => (Errno.EINVAL, (EventNotifier?)null),
            _ => (Errno.EBADF, null),
        });
    }

    public ulong Gpa => Vm.TestSlot.Gpa;
    public ulong Uaddr(ulong gpa) => (ulong)Vm.Memory.HostAddress(gpa);

    public long Ioctl(uint cmd, params byte[] arg) => V.Ioctl(cmd, arg);

    public static byte[] State(uint idx, uint num)
    {
        var b = new byte[VringStateSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, idx);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), num);
        return b;
    }

    public static byte[] U64(ulong v) { var b = new byte[8]; BinaryPrimitives.WriteUInt64LittleEndian(b, v); return b; }

    /// <summary>Owner set, ACKNOWLEDGE|DRIVER, the device's features accepted, FEATURES_OK.</summary>
    public Fixture Negotiated(ulong? features = null)
    {
        V.SetOwner();
        V.SetStatus(ACKNOWLEDGE);
        V.AddStatus(DRIVER);
        V.SetFeatures(features ?? V.GetFeatures());
        V.AddStatus(FEATURES_OK);
        return this;
    }

    public void Dispose()
    {
        V.Device.Dispose();
        Vm.Dispose();
        Kick.Dispose();
        Call.Dispose();
    }
}

public class StatusTests
{
    [Fact]
    public void Device_ids_and_sizes_are_the_devices()
    {
        using var n = new Fixture();
        Assert.Equal(ID_NET, n.V.GetDeviceId());
        Assert.Equal((uint)VirtioNet.ConfigSize, n.V.GetConfigSize());
        Assert.Equal(2u, n.V.GetVqsCount());
        Assert.Equal((ushort)256, n.V.GetVringNum());
        Assert.Equal((0UL, ulong.MaxValue), n.V.GetIovaRange());
        using var b = new Fixture(new VdpaBlockDevice(capacityBytes: 1 << 20));
        Assert.Equal(ID_BLOCK, b.V.GetDeviceId());
        Assert.Equal((uint)VirtioBlk.ConfigSize, b.V.GetConfigSize());
        Assert.Equal(1u, b.V.GetVqsCount());
    }

    [Fact]
    public void Short_argument_buffers_fault()
    {
        using var f = new Fixture();
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_VDPA_GET_DEVICE_ID, 0, 0, 0));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_VDPA_GET_STATUS));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_VDPA_SET_STATUS));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_GET_FEATURES, new byte[7]));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_SET_FEATURES, new byte[7]));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_SET_BACKEND_FEATURES, new byte[4]));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_VDPA_GET_VRING_NUM, 0));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_VDPA_GET_IOVA_RANGE, new byte[15]));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_VDPA_GET_CONFIG, new byte[7]));
    }

    [Fact]
    public void Status_bits_are_cleared_only_by_reset()
    {
        using var f = new Fixture();
        Assert.Equal(0, f.V.GetStatus());
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SET_STATUS, ACKNOWLEDGE));
        Assert.Equal(-Errno.EINVAL, f.Ioctl(VHOST_VDPA_SET_STATUS, DRIVER));          // would clear ACKNOWLEDGE
        Assert.Equal(ACKNOWLEDGE, f.V.GetStatus());
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SET_STATUS, ACKNOWLEDGE | DRIVER));
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SET_STATUS, ACKNOWLEDGE | DRIVER));       // same bits again: allowed
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SET_STATUS, 0));
        Assert.Equal(0, f.V.GetStatus());
        var e = Assert.Throws<VhostException>(() => { f.V.SetStatus(ACKNOWLEDGE); f.V.SetStatus(0x02); });
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.Contains("only a reset to 0 clears bits", e.Message);
    }

    [Fact]
    public void Features_are_frozen_after_FEATURES_OK()
    {
        using var f = new Fixture().Negotiated();
        Assert.Equal(FEATURES_OK, f.V.GetStatus() & FEATURES_OK);
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_FEATURES, Fixture.U64(Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM))));
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_FEATURES, new byte[1]));          // EBUSY is checked before the copy
    }

    [Fact]
    public void FEATURES_OK_stays_clear_without_VERSION_1()
    {
        using var f = new Fixture();
        f.V.SetStatus(ACKNOWLEDGE | DRIVER);
        f.V.SetFeatures(Bit(F_ACCESS_PLATFORM));
        f.V.AddStatus(FEATURES_OK);
        Assert.Equal(0, f.V.GetStatus() & FEATURES_OK);
        Assert.Equal(1, f.V.Device.Counters.Errors["FEATURES_OK without VERSION_1 (left clear)"]);
    }

    [Fact]
    public void DRIVER_OK_before_FEATURES_OK_needs_reset()
    {
        using var f = new Fixture();
        f.V.SetStatus(ACKNOWLEDGE | DRIVER);
        f.V.AddStatus(DRIVER_OK);
        Assert.Equal(ACKNOWLEDGE | DRIVER | DRIVER_OK | NEEDS_RESET, f.V.GetStatus());
        Assert.Equal(1, f.V.Device.Counters.Errors["DRIVER_OK before FEATURES_OK"]);
        // The driver cannot drop NEEDS_RESET except by resetting.
        Assert.Equal(-Errno.EINVAL, f.Ioctl(VHOST_VDPA_SET_STATUS, ACKNOWLEDGE | DRIVER | DRIVER_OK));
        f.V.Reset();
        Assert.Equal(0, f.V.GetStatus());
    }
}

public class FeatureTests
{
    [Fact]
    public void Net_features_offered_are_the_device_set_masked_by_the_seed_list()
    {
        using var f = new Fixture();
        Assert.Equal(VdpaNetDevice.Features & VhostVdpa.NetFeatures, f.V.GetFeatures());
        Assert.Equal(VdpaNetDevice.Features, f.V.GetFeatures()); // all the device offers is in the seed list
    }

    [Fact]
    public void Block_features_offered_are_the_device_set_masked_by_the_block_list()
    {
        using var f = new Fixture(new VdpaBlockDevice(capacityBytes: 1 << 20));
        Assert.Equal(VdpaBlockDevice.Features & VhostVdpa.BlockFeatures, f.V.GetFeatures());
        Assert.NotEqual(0UL, f.V.GetFeatures() & Bit(VirtioBlk.F_FLUSH));
    }

    [Theory]
    [InlineData(VirtioNet.F_CTRL_VQ)]       // not in the seed's VHOST_VDPA_NET_FEATURES
    [InlineData(VirtioNet.F_MQ)]
    [InlineData(F_IN_ORDER)]
    [InlineData(40)]
    public void Net_bits_outside_the_seed_list_are_refused(int bit)
    {
        using var f = new Fixture();
        f.V.SetStatus(ACKNOWLEDGE | DRIVER);
        Assert.Equal(-Errno.EINVAL, f.Ioctl(VHOST_SET_FEATURES, Fixture.U64(Bit(bit) | Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM))));
    }

    [Fact]
    public void Block_bits_are_refused_on_a_net_device_and_net_bits_on_a_block_device()
    {
        using var n = new Fixture();
        // bit 2 is VIRTIO_BLK_F_SEG_MAX on block and VIRTIO_NET_F_CTRL_GUEST_OFFLOADS on net: not in the net list.
        Assert.Equal(-Errno.EINVAL, n.Ioctl(VHOST_SET_FEATURES, Fixture.U64(Bit(VirtioBlk.F_SEG_MAX) | Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM))));
        using var b = new Fixture(new VdpaBlockDevice(capacityBytes: 1 << 20));
        // bit 16 is VIRTIO_NET_F_STATUS on net and VIRTIO_BLK_F_SECURE_ERASE on block: not allowed for block.
        Assert.Equal(-Errno.EINVAL, b.Ioctl(VHOST_SET_FEATURES, Fixture.U64(Bit(VirtioNet.F_STATUS) | Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM))));
        Assert.Equal(0, b.Ioctl(VHOST_SET_FEATURES, Fixture.U64(Bit(VirtioBlk.F_FLUSH) | Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM))));
    }

    [Fact]
    public void The_device_requires_ACCESS_PLATFORM()
    {
        using var f = new Fixture();
        var e = Assert.Throws<VhostException>(() => f.V.SetFeatures(Bit(F_VERSION_1)));
        Assert.Equal(Errno.EINVAL, e.Errno);
        Assert.Contains("ACCESS_PLATFORM", e.Message);
    }

    [Fact]
    public void Negotiated_set_is_what_the_driver_asked_for()
    {
        using var f = new Fixture().Negotiated(Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(RING_F_EVENT_IDX));
        Assert.Equal(Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | Bit(RING_F_EVENT_IDX), f.V.Device.DriverFeatures);
    }

    [Fact]
    public void Backend_features()
    {
        using var f = new Fixture();
        Assert.Equal(VhostVdpa.OfferedBackendFeatures, f.V.GetBackendFeatures());
        Assert.Equal(-Errno.EOPNOTSUPP, f.Ioctl(VHOST_SET_BACKEND_FEATURES, Fixture.U64(1UL << 9)));
        Assert.Equal(-Errno.EINVAL, f.Ioctl(VHOST_SET_BACKEND_FEATURES, Fixture.U64(1UL << VHOST_BACKEND_F_DESC_ASID)));
        Assert.Equal(-Errno.EOPNOTSUPP, f.Ioctl(VHOST_SET_BACKEND_FEATURES,
            Fixture.U64(1UL << VHOST_BACKEND_F_DESC_ASID | 1UL << VHOST_BACKEND_F_IOTLB_ASID)));
        Assert.Equal(0, f.Ioctl(VHOST_SET_BACKEND_FEATURES, Fixture.U64(1UL << VHOST_BACKEND_F_IOTLB_MSG_V2 | 1UL << VHOST_BACKEND_F_IOTLB_BATCH)));
        Assert.Equal(1UL << VHOST_BACKEND_F_IOTLB_MSG_V2 | 1UL << VHOST_BACKEND_F_IOTLB_BATCH, f.V.AckedBackendFeatures);
    }
}

public class ConfigTests
{
    static byte[] Cfg(uint off, uint len, int bufLen)
    {
        var b = new byte[8 + bufLen];
        BinaryPrimitives.WriteUInt32LittleEndian(b, off);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(4), len);
        return b;
    }

    [Theory]
    [InlineData(0u, 0u, 0, -Errno.EINVAL)]      // len 0
    [InlineData(25u, 1u, 1, -Errno.EINVAL)]     // off past the end
    [InlineData(20u, 8u, 8, -Errno.EINVAL)]     // past the end: E2BIG inside, EINVAL to userspace
    [InlineData(24u, 1u, 1, -Errno.EINVAL)]
    [InlineData(0u, 24u, 23, -Errno.EFAULT)]    // buffer shorter than len
    [InlineData(0u, 24u, 24, 0)]
    [InlineData(23u, 1u, 1, 0)]
    public void Net_config_bounds(uint off, uint len, int bufLen, long expected)
    {
        using var f = new Fixture();
        Assert.Equal(expected, f.V.Ioctl(VHOST_VDPA_GET_CONFIG, Cfg(off, len, bufLen)));
        Assert.Equal(expected, f.V.Ioctl(VHOST_VDPA_SET_CONFIG, Cfg(off, len, bufLen)));
    }

    [Fact]
    public void Net_config_layout()
    {
        var mac = new byte[] { 0x02, 0xaa, 0xbb, 0xcc, 0xdd, 0xee };
        using var f = new Fixture(new VdpaNetDevice(mac: mac, mtu: 9000));
        var c = f.V.GetConfig(0, VirtioNet.ConfigSize);
        Assert.Equal(mac, c[..6]);
        Assert.Equal(VirtioNet.S_LINK_UP, BinaryPrimitives.ReadUInt16LittleEndian(c.AsSpan(VirtioNet.ConfigStatus)));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(c.AsSpan(VirtioNet.ConfigMaxVirtqueuePairs)));
        Assert.Equal(9000, BinaryPrimitives.ReadUInt16LittleEndian(c.AsSpan(VirtioNet.ConfigMtu)));
        Assert.Equal(mac[2..4], f.V.GetConfig(2, 2));
        var e = Assert.Throws<VhostException>(() => f.V.GetConfig(20, 8));
        Assert.Contains("E2BIG inside", e.Message);
    }

    [Fact]
    public void Block_config_layout()
    {
        using var f = new Fixture(new VdpaBlockDevice(capacityBytes: 4 << 20));
        var c = f.V.GetConfig(0, VirtioBlk.ConfigSize);
        Assert.Equal((4UL << 20) / 512, BinaryPrimitives.ReadUInt64LittleEndian(c));
        Assert.Equal(512u, BinaryPrimitives.ReadUInt32LittleEndian(c.AsSpan(VirtioBlk.ConfigBlkSize)));
        Assert.Equal(VdpaBlockDevice.SizeMax, BinaryPrimitives.ReadUInt32LittleEndian(c.AsSpan(VirtioBlk.ConfigSizeMax)));
        Assert.Equal(VdpaBlockDevice.SegMax, BinaryPrimitives.ReadUInt32LittleEndian(c.AsSpan(VirtioBlk.ConfigSegMax)));
        Assert.Equal(1, BinaryPrimitives.ReadUInt16LittleEndian(c.AsSpan(VirtioBlk.ConfigNumQueues)));
        Assert.Equal(-Errno.EINVAL, f.V.Ioctl(VHOST_VDPA_GET_CONFIG, Cfg(90, 7, 7)));
    }

    [Fact]
    public void Config_writes_are_ignored_and_counted()
    {
        using var f = new Fixture();
        f.V.SetConfig(0, new byte[] { 1, 2, 3, 4, 5, 6 });
        Assert.Equal(new byte[] { 0x52, 0x54, 0x00, 0x12, 0x34, 0x56 }, f.V.GetConfig(0, 6));
        Assert.Equal(1, f.V.Device.Counters.ConfigWritesIgnored);
    }
}

public class VringTests
{
    [Fact]
    public void Vring_ioctls_need_an_owner_first()
    {
        using var f = new Fixture();
        Assert.Equal(-Errno.EPERM, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 256)));
        Assert.Equal(-Errno.EPERM, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(9, 256)));   // owner before index
        Assert.Equal(-Errno.EPERM, f.Ioctl(VHOST_SET_MEM_TABLE, new byte[8]));
        Assert.Equal(0, f.Ioctl(VHOST_SET_OWNER));
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_OWNER));
    }

    [Fact]
    public void Vrings_are_programmable_only_between_FEATURES_OK_and_DRIVER_OK()
    {
        using var f = new Fixture();
        f.V.SetOwner();
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 256)));
        f.V.SetStatus(ACKNOWLEDGE | DRIVER);
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 256)));
        f.V.SetFeatures(f.V.GetFeatures());
        f.V.AddStatus(FEATURES_OK);
        Assert.Equal(0, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 256)));
        Assert.Equal(256u, f.V.Device.Vqs[0].Num);
        f.V.AddStatus(DRIVER_OK);
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 128)));
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_VDPA_SET_VRING_ENABLE, Fixture.State(0, 1)));
        var e = Assert.Throws<VhostException>(() => f.V.SetVringBase(0, 0));
        Assert.Contains("between FEATURES_OK and DRIVER_OK", e.Message);
    }

    [Fact]
    public void ENABLE_AFTER_DRIVER_OK_allows_enabling_a_queue_late()
    {
        using var f = new Fixture();
        f.V.SetBackendFeatures(1UL << VHOST_BACKEND_F_ENABLE_AFTER_DRIVER_OK);
        f.Negotiated();
        f.V.AddStatus(DRIVER_OK);
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SET_VRING_ENABLE, Fixture.State(1, 1)));
        Assert.True(f.V.Device.Vqs[1].Ready);
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 128)));   // only ENABLE
    }

    [Fact]
    public void Queue_index_and_values_are_checked()
    {
        using var f = new Fixture().Negotiated();
        Assert.Equal(-Errno.ENOBUFS, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(2, 256)));
        Assert.Equal(-Errno.ENOBUFS, f.Ioctl(VHOST_GET_VRING_BASE, Fixture.State(0xffffffff, 0)));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_SET_VRING_NUM, 0, 0));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_SET_VRING_NUM, 0, 0, 0, 0));                      // index read, num not
        foreach (var bad in new uint[] { 0, 3, 100, 0x10000, 0x20000 })
            Assert.Equal(-Errno.EINVAL, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, bad)));
        Assert.Equal(0, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 1)));
        Assert.Equal(0, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 0x8000)));
        Assert.Equal(-Errno.EINVAL, f.Ioctl(VHOST_SET_VRING_BASE, Fixture.State(0, 0x10000)));
        Assert.Equal(0, f.Ioctl(VHOST_SET_VRING_BASE, Fixture.State(0, 0xfff0)));
        Assert.Equal((ushort)0xfff0, f.V.GetVringBase(0));
        Assert.Equal((ushort)0xfff0, f.V.Device.Vqs[0].LastAvailIdx);
    }

    [Fact]
    public void Vring_addresses_must_be_aligned()
    {
        using var f = new Fixture().Negotiated();
        Assert.Throws<VhostException>(() => f.V.SetVringAddr(0, 0x1000, 0x2001, 0x3000));
        Assert.Throws<VhostException>(() => f.V.SetVringAddr(0, 0x1000, 0x2000, 0x3002));
        Assert.Throws<VhostException>(() => f.V.SetVringAddr(0, 0x1000, 0x2000, 0x3000, log: 0x2, flags: 1));
        var e = Assert.Throws<VhostException>(() => f.V.SetVringAddr(0, 0x1000, 0x2000, 0x3000, flags: 2));
        Assert.Equal(Errno.EOPNOTSUPP, e.Errno);
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_SET_VRING_ADDR, new byte[39]));
        f.V.SetVringAddr(0, 0x1001, 0x2002, 0x3004);   // desc alignment is not checked by vhost
        var q = f.V.Device.Vqs[0];
        Assert.Equal((0x1001UL, 0x2002UL, 0x3004UL), (q.DescAddr, q.DriverAddr, q.DeviceAddr));
    }

    [Fact]
    public void An_enabled_queue_cannot_be_reprogrammed()
    {
        using var f = new Fixture().Negotiated();
        f.V.SetVringEnable(0, true);
        Assert.Equal(-Errno.EBUSY, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 64)));
        Assert.Equal(0, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(1, 64)));
        f.V.SetVringEnable(0, false);
        Assert.Equal(0, f.Ioctl(VHOST_SET_VRING_NUM, Fixture.State(0, 64)));
    }

    [Fact]
    public void Kick_and_call_take_eventfds()
    {
        using var f = new Fixture().Negotiated();
        f.V.SetVringKick(0, 100);
        f.V.SetVringCall(0, 101);
        Assert.Same(f.Kick, f.V.KickOf(0));
        Assert.Same(f.Call, f.V.CallOf(0));
        Assert.Equal(Errno.EBADF, Assert.Throws<VhostException>(() => f.V.SetVringKick(0, 55)).Errno);
        Assert.Equal(Errno.EINVAL, Assert.Throws<VhostException>(() => f.V.SetVringCall(1, 3)).Errno);
        f.V.SetVringKick(0, -1);
        Assert.Null(f.V.KickOf(0));
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SET_CONFIG_CALL, 101, 0, 0, 0));
        Assert.Same(f.Call, f.V.ConfigCall);
        Assert.Equal(-Errno.EBADF, f.Ioctl(VHOST_VDPA_SET_CONFIG_CALL, 7, 0, 0, 0));
    }

    [Fact]
    public void Groups_address_spaces_and_unknown_commands()
    {
        using var f = new Fixture();
        var b = new byte[4];
        Assert.Equal(0, f.V.Ioctl(VHOST_VDPA_GET_AS_NUM, b));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(b));
        Assert.Equal(0, f.V.Ioctl(VHOST_VDPA_GET_GROUP_NUM, b));
        Assert.Equal(1u, BinaryPrimitives.ReadUInt32LittleEndian(b));
        Assert.Equal(-Errno.ENOTTY, f.Ioctl(VHOST_SET_LOG_BASE, new byte[8]));
        Assert.Equal(-Errno.ENOTTY, f.Ioctl(VHOST_SET_LOG_FD, new byte[4]));
        f.V.SetOwner();
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SET_GROUP_ASID, Fixture.State(0, 0)));
        Assert.Equal(-Errno.EINVAL, f.Ioctl(VHOST_VDPA_SET_GROUP_ASID, Fixture.State(0, 1)));
        Assert.Equal(-Errno.EOPNOTSUPP, f.Ioctl(VHOST_VDPA_GET_VRING_DESC_GROUP, Fixture.State(0, 0)));
        Assert.Equal(-Errno.EFAULT, f.Ioctl(VHOST_RESET_OWNER));        // not handled: falls to the vring path, no argument
        Assert.Equal(-Errno.ENOTTY, f.Ioctl(0xdeadbeef, Fixture.State(0, 0)));
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_SUSPEND));
        Assert.True(f.V.Device.Suspended);
        Assert.Equal(0, f.Ioctl(VHOST_VDPA_RESUME));
        Assert.False(f.V.Device.Suspended);
    }

    [Fact]
    public void Ioctl_numbers_match_the_uapi_encoding()
    {
        Assert.Equal(0x8008AF00u, VHOST_GET_FEATURES);
        Assert.Equal(0x4008AF00u, VHOST_SET_FEATURES);
        Assert.Equal(0x0000AF01u, VHOST_SET_OWNER);
        Assert.Equal(0x4008AF03u, VHOST_SET_MEM_TABLE);
        Assert.Equal(0x4028AF11u, VHOST_SET_VRING_ADDR);
        Assert.Equal(0xC008AF12u, VHOST_GET_VRING_BASE);
        Assert.Equal(0x4008AF21u, VHOST_SET_VRING_CALL);
        Assert.Equal(0x8004AF70u, VHOST_VDPA_GET_DEVICE_ID);
        Assert.Equal(0x8001AF71u, VHOST_VDPA_GET_STATUS);
        Assert.Equal(0x4001AF72u, VHOST_VDPA_SET_STATUS);
        Assert.Equal(0x8008AF73u, VHOST_VDPA_GET_CONFIG);
        Assert.Equal(0x8002AF76u, VHOST_VDPA_GET_VRING_NUM);
        Assert.Equal(0x8010AF78u, VHOST_VDPA_GET_IOVA_RANGE);
        Assert.Equal(0x0000AF7Du, VHOST_VDPA_SUSPEND);
        Assert.Equal(0x8004AF80u, VHOST_VDPA_GET_VQS_COUNT);
        Assert.Equal("VHOST_VDPA_GET_STATUS", IoctlName(0x8001AF71u));
    }
}
