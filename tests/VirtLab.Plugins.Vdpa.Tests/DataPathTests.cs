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

    // Lock-step: the device runs on the test's thread only where the driver would sleep, so every count is exact.
    // A round: the driver fills the window — 238 frames, where virtio-net stops its transmit queue with fewer than
    // 2 + MAX_SKB_FRAGS descriptors free (check_sq_full_and_disable), which turns TX interrupts on (enable_cb_delayed:
    // after 3/4 of what is in flight with EVENT_IDX; without it the flag is just cleared) in both napi_tx modes — in
    // publishes of `batch` frames (of at most 64 after the first window: a NAPI poll frees 64 and the queue restarts
    // with what fits), each followed by a kick decision, then sleeps with the RX interrupt armed for the next used
    // buffer; the device wakes once, loops all 238 frames, publishes its used rings at 64, 128, 192 and 238 (4 flushes)
    // and re-arms its TX kick when TX is empty.
    //  - without EVENT_IDX the device's NO_NOTIFY is clear from its re-arm until its next pass: every publish kicks;
    //    the driver's NO_INTERRUPT is clear on RX and TX while it sleeps: every flush interrupts both.
    //  - with EVENT_IDX avail_event = where the device stopped: only the first publish crosses it; used_event = the
    //    driver's last used (RX), 3/4 of the frames in flight ahead (TX): one interrupt each per round.
    //    Plus one: vhost signals a queue's first flush unconditionally (signalled_used_valid), here TX's.
    [Theory]
    [InlineData(1, false)]
    [InlineData(8, false)]
    [InlineData(16, false)]
    [InlineData(32, false)]
    [InlineData(128, false)]
    [InlineData(8, true)]
    [InlineData(128, true)]
    public void Lock_step_loopback_counts_every_notification_exactly(int batch, bool napiTx)
    {
        const int rounds = 10, window = 256 - VdpaNet.TxWakeThreshold + 1, flushes = 4;
        using var vm = NewVm();
        var with = vm.Attach(new VdpaNet(new VdpaNetOptions { EventIdx = true, LockStep = true, TxInterrupts = napiTx }));
        var without = vm.Attach(new VdpaNet(new VdpaNetOptions { EventIdx = false, LockStep = true, TxInterrupts = napiTx }));
        Assert.Equal(238, with.TxStopInFlight);
        var a = with.Loopback(rounds * window, 64, batch, verify: true);
        var b = without.Loopback(rounds * window, 64, batch, verify: true);
        Assert.True(a.EventIdx && !b.EventIdx);
        Assert.Equal(rounds, with.Device.Counters.WorkerWakeups);
        Assert.Equal(rounds, without.Device.Counters.WorkerWakeups);
        int later = Math.Min(batch, VdpaNet.NapiBudget);
        int publishes = (window + batch - 1) / batch + (rounds - 1) * ((window + later - 1) / later);
        Assert.Equal((rounds, 2 * rounds + 1), (a.Kicks, a.Interrupts));
        Assert.Equal((publishes, 2 * rounds * flushes), (b.Kicks, b.Interrupts));
        Assert.Equal(rounds * window, with.NetDevice.LoopedPackets);
        Assert.Equal(rounds * window, without.NetDevice.LoopedPackets);
    }

    const int UsedBatch = VdpaNetDevice.UsedBatch;

    // Lock-step, a device that keeps up: it runs after every publish (one kick, one pass, one flush for ≤ 64 frames).
    // Then the flags cost no more than the event indexes: NO_NOTIFY is clear exactly when avail_event would be crossed,
    // NO_INTERRUPT clear exactly when used_event would be. Only a pass with several flushes (128 frames: 2) shows the
    // difference — and the one unconditional first interrupt of TX with EVENT_IDX.
    [Theory]
    [InlineData(8)]
    [InlineData(64)]
    [InlineData(128)]
    public void Lock_step_a_device_that_keeps_up_takes_one_kick_and_one_interrupt_per_publish_in_both_modes(int batch)
    {
        const int rounds = 20;
        using var vm = NewVm();
        foreach (var eventIdx in new[] { true, false })
        {
            var nic = vm.Attach(new VdpaNet(new VdpaNetOptions { EventIdx = eventIdx, LockStep = true }));
            var (k0, i0, _, _) = nic.Notifications;
            for (int r = 0; r < rounds; r++)
            {
                for (int i = 0; i < batch; i++)
                    Assert.True(nic.Send(nic.Frame(BitConverter.GetBytes(r * batch + i)), kick: i == batch - 1));
                Assert.True(nic.Device.RunPending());
                for (int i = 0; i < batch; i++)
                    Assert.Equal(nic.Frame(BitConverter.GetBytes(r * batch + i)), nic.Receive(TimeSpan.Zero));
            }
            var (k1, i1, _, _) = nic.Notifications;
            int flushes = (batch + UsedBatch - 1) / UsedBatch;
            Assert.Equal(rounds, k1 - k0);
            Assert.Equal(eventIdx ? rounds + 1 : rounds * flushes, i1 - i0);
            nic.Dispose();
        }
    }

    [Fact]
    public void The_worker_runs_on_the_cpu_asked_for_and_unplaced_with_the_kernels_errno_on_one_it_refuses()
    {
        using var vm = NewVm();
        var cpus = CpuAffinity.OfCurrentThread();
        var placed = vm.Attach(new VdpaNet(new VdpaNetOptions { DeviceCpu = cpus[^1] }));
        Assert.Equal([cpus[^1]], placed.Device.WorkerCpus);              // read back on the worker (sched_getaffinity)
        Assert.Equal($"CPU {cpus[^1]}", placed.Device.WorkerPlacement);
        Assert.Equal(3_000, placed.Loopback(3_000, 64, 8, verify: true).Packets);
        // A CPU the machine does not have: the kernel's EINVAL, said; the worker runs where it may and the device works.
        var refused = vm.Attach(new VdpaNet(new VdpaNetOptions { DeviceCpu = 8191 }));
        Assert.StartsWith("not placed: sched_setaffinity EINVAL: CPU 8191 is not one this thread may run on", refused.Device.WorkerPlacement);
        Assert.Equal(cpus, refused.Device.WorkerCpus);
        Assert.Equal(3_000, refused.Loopback(3_000, 64, 8, verify: true).Packets);
        var unplaced = vm.Attach(new VdpaNet());
        Assert.Equal($"any of {CpuAffinity.Format(cpus)} (not placed)", unplaced.Device.WorkerPlacement);
        Assert.Throws<ArgumentOutOfRangeException>(() => new VdpaNet(new VdpaNetOptions { DeviceCpu = -1 }));
    }

    [Fact]
    public void Lock_step_reports_a_wait_nobody_will_answer()
    {
        using var vm = NewVm();
        var nic = vm.Attach(new VdpaNet(new VdpaNetOptions { LockStep = true }));
        Assert.True(nic.Device.LockStep);
        Assert.Null(nic.Receive(TimeSpan.FromSeconds(5)));          // the device runs (the RX kick of the initial fill), nothing comes back: at once
        Assert.True(nic.Send(nic.Frame("x"u8), kick: false));       // added, no kick: a worker would sleep on
        Assert.False(nic.Device.RunPending());
        Assert.Null(nic.Receive(TimeSpan.FromSeconds(5)));
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
    public void Lock_step_runs_each_request_on_the_callers_thread_with_one_kick_and_one_interrupt()
    {
        using var vm = Vm.Create(8.MiB(), backend: Backend.Sim);
        var disk = vm.Attach(new VdpaBlk(new VdpaBlkOptions { CapacityBytes = 1 << 20, MaxRequestBytes = 4096, LockStep = true }));
        var data = new byte[3 * 4096];
        new Random(3).NextBytes(data);
        var (k0, i0, _, _) = disk.Notifications;
        disk.Write(8, data);                                     // 3 requests, one at a time
        Assert.Equal(data, disk.Read(8, data.Length));           // 3 more
        var (k1, i1, _, _) = disk.Notifications;
        Assert.Equal((6, 6), (k1 - k0, i1 - i0));
        Assert.Equal(6, disk.Device.Counters.WorkerWakeups);
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
