namespace VirtLab.Plugins.Vdpa;

/// <summary>
/// The script global <c>Vdpa</c>: <c>var nic = vm.Attach(Vdpa.Net()); nic.Send("hi"); nic.Receive();</c>,
/// <c>var disk = vm.Attach(Vdpa.Block()); disk.Write(0, data); disk.Read(0, 4096);</c>. Each attached device is a
/// virtio driver talking to a vhost-vdpa char-device model over a vdpa_sim-like parent; <c>nic.Vhost</c> is the
/// char device (typed methods and the ioctl/write byte entry), <c>nic.Device</c> the parent.
/// </summary>
public sealed class VdpaApi
{
    int nets, blks;

    /// <summary>A virtio-net driver over vhost-vdpa on a loopback net device (TX comes back on RX). <paramref name="napiTx"/>:
    /// TX completions by interrupt (<see cref="VdpaNetOptions.TxInterrupts"/>); <paramref name="lockStep"/>: no device
    /// thread, exact notification counts (<see cref="VdpaOptions.LockStep"/>).</summary>
    public VdpaNet Net(bool eventIdx = true, bool indirect = false, int queueSize = 256, VdpaMemoryPath memory = VdpaMemoryPath.Iotlb,
        byte[]? mac = null, ushort mtu = 1500, bool napiTx = false, bool lockStep = false)
        => new(new VdpaNetOptions
        {
            EventIdx = eventIdx, Indirect = indirect, QueueSize = queueSize, Memory = memory, Mac = mac, Mtu = mtu,
            TxInterrupts = napiTx, LockStep = lockStep,
        },
            $"vdpa-net{Interlocked.Increment(ref nets) - 1}");

    /// <summary>A virtio-blk driver over vhost-vdpa on a RAM-disk block device (128 MiB by default).</summary>
    public VdpaBlk Block(long capacityBytes = 128L << 20, bool eventIdx = true, bool indirect = false, int queueSize = 128, int depth = 16,
        int maxRequestBytes = 64 << 10, VdpaMemoryPath memory = VdpaMemoryPath.Iotlb)
        => new(new VdpaBlkOptions
        {
            CapacityBytes = capacityBytes, EventIdx = eventIdx, Indirect = indirect, QueueSize = queueSize, Depth = depth,
            MaxRequestBytes = maxRequestBytes, Memory = memory,
        }, $"vdpa-blk{Interlocked.Increment(ref blks) - 1}");

    /// <summary>A bare net parent device, for driving vhost-vdpa by hand (<c>new VhostVdpa(dev, vm, fds.Resolve)</c>).</summary>
    public VdpaNetDevice NetDevice(byte[]? mac = null, ushort mtu = 1500) => new(mac: mac, mtu: mtu);

    /// <summary>A bare block parent device over a RAM disk.</summary>
    public VdpaBlockDevice BlockDevice(long capacityBytes = 128L << 20) => new(capacityBytes: capacityBytes);

    public override string ToString() => "Vdpa: vhost-vdpa over simulated net and block devices — Vdpa.Net(), Vdpa.Block()";
}
