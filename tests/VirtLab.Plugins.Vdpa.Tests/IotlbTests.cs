using System.Buffers.Binary;
using VirtLab.Plugins.Vdpa;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Native;
using Xunit;
using static VirtLab.Plugins.Vdpa.Uapi.Vhost;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;

namespace VirtLab.Plugins.Vdpa.Tests;

public class IotlbTests
{
    static Fixture Owned()
    {
        var f = new Fixture();
        f.V.SetOwner();
        return f;
    }

    [Fact]
    public void Malformed_messages_are_EINVAL()
    {
        using var f = Owned();
        Assert.Equal(-Errno.EINVAL, f.V.Write([1, 0, 0]));
        var m = IotlbMsg.Update(0, 0x1000, f.Uaddr(f.Gpa), VHOST_ACCESS_RW).ToMsgV2();
        BinaryPrimitives.WriteUInt32LittleEndian(m, 3);                          // unknown message type
        Assert.Equal(-Errno.EINVAL, f.V.Write(m));
        var ok = IotlbMsg.Update(0, 0x1000, f.Uaddr(f.Gpa), VHOST_ACCESS_RW).ToMsgV2();
        Assert.Equal(-Errno.EINVAL, f.V.Write(ok.AsSpan(0, 39)));                 // header + 31 of 32 message bytes
        Assert.Equal(-Errno.EINVAL, f.V.Write(IotlbMsg.Update(0, 0, f.Uaddr(f.Gpa), 3).ToMsgV2()));
        Assert.Equal(-Errno.EINVAL, f.V.Write(IotlbMsg.Invalidate(0, 0).ToMsgV2()));
        Assert.Equal(MsgV2Size, f.V.Write(ok.AsSpan(0, 40)));                     // the padding need not be written
        Assert.Equal(0, f.V.Counters.IotlbRefused - 5);
    }

    [Fact]
    public void Handler_errors_reach_userspace_as_EFAULT()
    {
        using var f = new Fixture();
        var msg = IotlbMsg.Update(0, 0x1000, f.Uaddr(f.Gpa), VHOST_ACCESS_RW).ToMsgV2();
        Assert.Equal(-Errno.EFAULT, f.V.Write(msg));                               // no owner yet
        Assert.Equal(Errno.EPERM, f.V.LastIotlbErrno);
        f.V.SetOwner();
        Assert.Equal(MsgV2Size, f.V.Write(msg));
        Assert.Equal(-Errno.EFAULT, f.V.Write(msg));                               // overlap
        Assert.Equal(Errno.EEXIST, f.V.LastIotlbErrno);
        var e = Assert.Throws<VhostException>(() => f.V.Map(0x800, 0x1000, f.Gpa));
        Assert.Equal(Errno.EEXIST, e.Errno);
        Assert.Contains("overlaps", e.Message);
        Assert.Equal(1, f.V.Counters.Failures["IOTLB UPDATE: EFAULT (EEXIST)"] - 1);
    }

    [Theory]
    [InlineData(0xffff_ffff_ffff_f000UL, 0x2000UL)]     // wraps past 2^64
    [InlineData(0xffff_ffff_ffff_ffffUL, 2UL)]
    [InlineData(1UL, ulong.MaxValue)]
    public void Overflowing_ranges_are_refused(ulong iova, ulong size)
    {
        using var f = Owned();
        Assert.Equal(-Errno.EFAULT, f.V.Write(IotlbMsg.Update(iova, size, f.Uaddr(f.Gpa), 3).ToMsgV2()));
        Assert.Equal(Errno.EINVAL, f.V.LastIotlbErrno);
        Assert.Equal(0, f.V.Iotlb.Count);
    }

    [Fact]
    public void The_last_page_of_the_IOVA_space_can_be_mapped()
    {
        using var f = Owned();
        f.V.Map(0xffff_ffff_ffff_f000, 0x1000, f.Gpa);
        Assert.Equal(new IovaMapping(0xffff_ffff_ffff_f000, ulong.MaxValue - 0xffff_ffff_ffff_f000 + 1, f.Gpa, MemoryAccess.ReadWrite), Assert.Single(f.V.Device.DeviceMap));
    }

    [Fact]
    public void User_addresses_outside_the_VM_are_refused()
    {
        using var f = Owned();
        // The end of a slot whose host mapping is not followed by another slot's.
        var slots = f.Vm.Slots;
        var end = slots.Select(s => (ulong)s.HostAddress + (ulong)s.Size.Bytes)
            .First(e => slots.All(s => (ulong)s.HostAddress != e));
        Assert.Equal(-Errno.EFAULT, f.V.Write(IotlbMsg.Update(0, 0x2000, end - 0x1000, 3).ToMsgV2()));
        Assert.Equal(Errno.EFAULT, f.V.LastIotlbErrno);
        Assert.Equal(-Errno.EFAULT, f.V.Write(IotlbMsg.Update(0, 0x1000, 0x1000, 3).ToMsgV2()));
        Assert.Empty(f.V.Device.DeviceMap);
    }

    [Fact]
    public void Unbatched_updates_reach_the_device_at_once_with_whole_pages()
    {
        using var f = Owned();
        f.V.Send(IotlbMsg.Update(0x10010, 0x20, f.Uaddr(f.Gpa + 0x3010), VHOST_ACCESS_RO));
        Assert.Equal(new IovaMapping(0x10000, 0x10fff - 0x10000 + 1, f.Gpa + 0x3000, MemoryAccess.Read), Assert.Single(f.V.Device.DeviceMap));
        f.V.Map(0x20000, 0x4000, f.Gpa + 0x8000, VHOST_ACCESS_WO);
        Assert.Equal(2, f.V.Device.DeviceMap.Count);
        f.V.Unmap(0x20fff, 1);                                 // any overlap removes the whole map
        Assert.Equal(new IovaMapping(0x10000, 0x10fff - 0x10000 + 1, f.Gpa + 0x3000, MemoryAccess.Read), Assert.Single(f.V.Device.DeviceMap));
        f.V.Unmap(0, ulong.MaxValue);
        Assert.Empty(f.V.Device.DeviceMap);
        Assert.Equal(0, f.V.Iotlb.Count);
    }

    [Fact]
    public void A_batch_changes_the_device_map_at_BATCH_END()
    {
        using var f = Owned();
        f.V.Map(0, 0x1000, f.Gpa);
        long setMaps = f.V.Device.Counters.SetMaps;
        f.V.BatchBegin();
        Assert.True(f.V.InBatch);
        f.V.Map(0x1000, 0x1000, f.Gpa + 0x1000);
        f.V.Map(0x2000, 0x1000, f.Gpa + 0x2000);
        f.V.Unmap(0, 0x1000);
        Assert.Equal(new IovaMapping(0, 0xfff - 0 + 1, f.Gpa, MemoryAccess.ReadWrite), Assert.Single(f.V.Device.DeviceMap));   // still the old map
        Assert.Equal(2, f.V.Iotlb.Count);                                                        // vhost's own table moved on
        Assert.Equal(-Errno.EFAULT, f.V.Write(IotlbMsg.Update(0x1800, 0x10, f.Uaddr(f.Gpa), 3).ToMsgV2()));
        Assert.Equal(Errno.EEXIST, f.V.LastIotlbErrno);                                          // overlap is checked at once
        f.V.BatchEnd();
        Assert.False(f.V.InBatch);
        Assert.Equal(new[] { new IovaMapping(0x1000, 0x1fff - 0x1000 + 1, f.Gpa + 0x1000, MemoryAccess.ReadWrite), new IovaMapping(0x2000, 0x2fff - 0x2000 + 1, f.Gpa + 0x2000, MemoryAccess.ReadWrite) },
            f.V.Device.DeviceMap);
        Assert.Equal(setMaps + 1, f.V.Device.Counters.SetMaps);
        f.V.BatchEnd();                                                                          // outside a batch: nothing
        Assert.Equal(setMaps + 1, f.V.Device.Counters.SetMaps);
    }

    [Fact]
    public void Asid_is_read_only_once_IOTLB_ASID_is_acked()
    {
        using var f = Owned();
        Assert.Equal(MsgV2Size, f.V.Write(IotlbMsg.Update(0, 0x1000, f.Uaddr(f.Gpa), 3).ToMsgV2(asid: 7)));   // ignored
        f.V.SetBackendFeatures(1UL << VHOST_BACKEND_F_IOTLB_MSG_V2 | 1UL << VHOST_BACKEND_F_IOTLB_ASID);
        Assert.Equal(-Errno.EFAULT, f.V.Write(IotlbMsg.Update(0x1000, 0x1000, f.Uaddr(f.Gpa), 3).ToMsgV2(asid: 1)));
        Assert.Equal(Errno.EINVAL, f.V.LastIotlbErrno);
        Assert.Equal(MsgV2Size, f.V.Write(IotlbMsg.Update(0x1000, 0x1000, f.Uaddr(f.Gpa), 3).ToMsgV2(asid: 0)));
    }

    [Fact]
    public void Legacy_v1_messages_are_accepted()
    {
        using var f = Owned();
        var b = new byte[MsgSize];
        BinaryPrimitives.WriteUInt32LittleEndian(b, VHOST_IOTLB_MSG);
        IotlbMsg.Update(0, 0x1000, f.Uaddr(f.Gpa), 3).Write(b.AsSpan(8));
        Assert.Equal(MsgSize, f.V.Write(b));
        Assert.Single(f.V.Device.DeviceMap);
    }

    [Fact]
    public void The_device_map_is_bounded_and_a_refused_update_is_rolled_back()
    {
        using var f = Owned();
        f.V.BatchBegin();
        for (ulong i = 0; i < VdpaDevice.MaxIotlbEntries; i++) f.V.Map(i * 0x2000, 0x1000, f.Gpa);
        f.V.BatchEnd();
        Assert.Equal(VdpaDevice.MaxIotlbEntries, f.V.Device.DeviceMap.Count);
        var e = Assert.Throws<VhostException>(() => f.V.Map(0x1000_0000, 0x1000, f.Gpa));
        Assert.Equal(Errno.ENOSPC, e.Errno);
        Assert.Equal(VdpaDevice.MaxIotlbEntries, f.V.Iotlb.Count);
        Assert.Equal(VdpaDevice.MaxIotlbEntries, f.V.Device.DeviceMap.Count);
    }

    [Fact]
    public void Reset_clears_the_device_map_unless_IOTLB_PERSIST()
    {
        using var f = Owned();
        f.V.Map(0, 0x1000, f.Gpa);
        f.V.Reset();
        Assert.Empty(f.V.Device.DeviceMap);
        Assert.Equal(1, f.V.Iotlb.Count);                    // vhost keeps its table: userspace must invalidate
        f.V.Unmap(0, 0x1000);
        f.V.SetBackendFeatures(1UL << VHOST_BACKEND_F_IOTLB_PERSIST);
        f.V.Map(0, 0x1000, f.Gpa);
        f.V.Reset();
        Assert.Single(f.V.Device.DeviceMap);
    }

    [Fact]
    public void Mem_table_replaces_the_device_map()
    {
        using var f = Owned();
        f.V.SetMemTable([(0x100000, 0x10000, f.Uaddr(f.Gpa))]);
        Assert.Equal(new IovaMapping(0x100000, 0x10ffff - 0x100000 + 1, f.Gpa, MemoryAccess.ReadWrite), Assert.Single(f.V.Device.DeviceMap));
        Assert.Equal(Errno.EFAULT, Assert.Throws<VhostException>(() =>
            f.V.SetMemTable([(0, 0x1000, 0x1000)])).Errno);
        Assert.Equal(Errno.EFAULT, Assert.Throws<VhostException>(() => f.V.SetMemTable([(0, 0, f.Uaddr(f.Gpa))])).Errno);
        Assert.Equal(Errno.EFAULT, Assert.Throws<VhostException>(() =>
            f.V.SetMemTable([(0, 0x2000, f.Uaddr(f.Gpa)), (0x1000, 0x1000, f.Uaddr(f.Gpa))])).Errno);
        Assert.Equal(Errno.E2BIG, Assert.Throws<VhostException>(() =>
            f.V.SetMemTable(Enumerable.Range(0, 65).Select(i => ((ulong)i << 12, 0x1000UL, f.Uaddr(f.Gpa))).ToList())).Errno);
        var hdr = new byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(hdr.AsSpan(4), 1);
        Assert.Equal(-Errno.EOPNOTSUPP, f.V.Ioctl(VHOST_SET_MEM_TABLE, hdr));
        BinaryPrimitives.WriteUInt64LittleEndian(hdr, 1);
        Assert.Equal(-Errno.EFAULT, f.V.Ioctl(VHOST_SET_MEM_TABLE, hdr));                       // 1 region, none given
        Assert.Equal(new IovaMapping(0x100000, 0x10ffff - 0x100000 + 1, f.Gpa, MemoryAccess.ReadWrite), Assert.Single(f.V.Device.DeviceMap));
    }
}
