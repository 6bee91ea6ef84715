using VirtLab.Plugins.Vdpa;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;

namespace VirtLab.Plugins.Vdpa.Tests;

public class NetDataPathTests
{
    static Vm NewVm() => Vm.Create(8.MiB(), backend: Backend.Sim);

    [Fact]
    public void A_frame_sent_comes_back()
    {
        using var vm = NewVm();
        var nic = vm.Attach(new VdpaNet());
        Assert.Equal(ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK, nic.Status);
        Assert.Contains(nic, vm.Devices);
        Assert.True(nic.Send("hello vdpa"));
        var f = nic.Receive(TimeSpan.FromSeconds(5));
        Assert.NotNull(f);
        Assert.Equal(nic.Frame("hello vdpa"u8), f);
        Assert.Null(nic.Receive(TimeSpan.FromMilliseconds(20)));
    }

    [Theory]
    [InlineData(true, false, VdpaMemoryPath.Iotlb)]
    [InlineData(false, false, VdpaMemoryPath.IotlbUnbatched)]
    [InlineData(true, true, VdpaMemoryPath.MemTable)]
    public void Loopback_delivers_every_packet_intact_and_in_order_across_index_wrap(bool eventIdx, bool indirect, VdpaMemoryPath memory)
    {
        using var vm = NewVm();
        var nic = vm.Attach(new VdpaNet(new VdpaNetOptions { EventIdx = eventIdx, Indirect = indirect, QueueSize = 64, Memory = memory }));
        // 70,000 packets through 64-entry rings: the 16-bit avail and used indices wrap.
        var r = nic.Loopback(70_000, frameBytes: 100, batch: 48, verify: true);
        Assert.Equal(70_000, r.Packets);
        Assert.Equal(70_000, nic.NetDevice.LoopedPackets);
        Assert.Equal(0, nic.Device.Counters.ErrorTotal);
        Assert.Equal((ushort)(70_000 % 65536), nic.Device.Vqs[VdpaNetDevice.TxQueue].Queue!.LastAvailIdx);
    }

    [Fact]
    public void EVENT_IDX_reduces_notifications()
    {
        using var vm = NewVm();
        var with = vm.Attach(new VdpaNet(new VdpaNetOptions { EventIdx = true }));
        var without = vm.Attach(new VdpaNet(new VdpaNetOptions { EventIdx = false }));
        var a = with.Loopback(20_000, 64, batch: 64);
        var b = without.Loopback(20_000, 64, batch: 64);
        Assert.True(a.EventIdx && !b.EventIdx);
        Assert.True(a.Kicks + a.Interrupts < b.Kicks + b.Interrupts,
            $"with EVENT_IDX {a.Kicks}+{a.Interrupts}, without {b.Kicks}+{b.Interrupts}");
    }
}

public class BlockDataPathTests
{
    [Fact]
    public void Data_round_trips_through_the_ram_disk()
    {
        using var vm = Vm.Create(8.MiB(), backend: Backend.Sim);
        var disk = vm.Attach(new VdpaBlk(new VdpaBlkOptions { CapacityBytes = 4 << 20, MaxRequestBytes = 16 << 10 }));
        Assert.Equal((ulong)(4 << 20) / 512, disk.CapacitySectors);
        Assert.Equal(512u, disk.BlockSize);
        var data = new byte[40 << 10];
        new Random(7).NextBytes(data);
        disk.Write(100, data);                                   // 3 requests: 16 + 16 + 8 KiB
        Assert.Equal(data, disk.BlockDevice.Disk.Slice(100 * 512, data.Length).ToArray());
        Assert.Equal(data, disk.Read(100, data.Length));
        Assert.Equal(data[512..1024], disk.Read(101, 512));
        disk.Flush();
        Assert.Equal("vdpa_blk_sim", disk.GetId());
        Assert.Equal(3, disk.BlockDevice.Writes);
    }

    [Fact]
    public void Requests_past_the_end_fail_with_IOERR()
    {
        using var vm = Vm.Create(8.MiB(), backend: Backend.Sim);
        var disk = vm.Attach(new VdpaBlk(new VdpaBlkOptions { CapacityBytes = 1 << 20, MaxRequestBytes = 8192 }));
        var e = Assert.Throws<VirtioBlkException>(() => disk.Read(disk.CapacitySectors - 1, 1024));
        Assert.Equal(VirtioBlk.S_IOERR, e.Status);
        Assert.Equal(1, disk.BlockDevice.IoErrors);
        disk.Read(disk.CapacitySectors - 2, 1024);                // the last two sectors are fine
        Assert.Equal(0, disk.Device.GetStatus() & NEEDS_RESET);
    }
}
