namespace VirtLab.Plugins.Vdpa;

/// <summary>The script global <c>Vdpa</c>.</summary>
public sealed class VdpaApi
{
    /// <summary>A vdpa_sim-like net device (RX 0, TX 1, TX looped back into RX).</summary>
    public VdpaNetDevice NetDevice(byte[]? mac = null, ushort mtu = 1500) => new(mac: mac, mtu: mtu);

    /// <summary>A vdpa_sim-like block device over a RAM disk (128 MiB by default).</summary>
    public VdpaBlockDevice BlockDevice(long capacityBytes = 128L << 20) => new(capacityBytes: capacityBytes);

    public override string ToString() => "Vdpa: vhost-vdpa over simulated net and block devices";
}
