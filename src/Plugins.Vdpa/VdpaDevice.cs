using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Native;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;

namespace VirtLab.Plugins.Vdpa;

/// <summary>Per-virtqueue state the parent device keeps (struct vdpasim_virtqueue).</summary>
public sealed class VdpaVqState
{
    public ulong DescAddr, DriverAddr, DeviceAddr;
    public uint Num;
    public bool Ready;
    /// <summary>The avail index the device will read next (vdpa_vq_state.split.avail_index).</summary>
    public ushort LastAvailIdx;
    /// <summary>The interrupt callback (vhost-vdpa's vhost_vdpa_virtqueue_cb, which signals the call eventfd).</summary>
    public Action? Callback;
}

/// <summary>What a device counted: requests, notifications, and every refused driver action by kind.</summary>
public sealed class VdpaDeviceCounters
{
    public long Kicks, Interrupts, Requests, Bytes, SetMaps, ConfigWritesIgnored;
    readonly Dictionary<string, long> errors = new();

    public IReadOnlyDictionary<string, long> Errors { get { lock (errors) return new Dictionary<string, long>(errors); } }
    public long ErrorTotal { get { lock (errors) return errors.Values.Sum(); } }

    internal void Error(string kind) { lock (errors) errors[kind] = errors.GetValueOrDefault(kind) + 1; }
}

/// <summary>
/// A vDPA parent device as drivers/vdpa/vdpa_sim models one: the vdpa_config_ops that vhost-vdpa calls (status,
/// features, config space, vq address/num/ready/state/callback, kick, set_map, suspend/resume), plus the device's
/// own IOMMU (the map set_map installs: the device reaches guest memory only through it).
/// </summary>
public abstract class VdpaDevice
{
    /// <summary>VDPASIM_QUEUE_MAX: the largest ring the device supports (VHOST_VDPA_GET_VRING_NUM).</summary>
    public const ushort QueueMax = 256;
    /// <summary>vdpa_sim's max_iotlb_entries default: set_map with more entries fails (-ENOSPC) and leaves the map empty.</summary>
    public const int MaxIotlbEntries = 2048;

    protected readonly object Sync = new();
    protected readonly byte[] Config;
    readonly VdpaVqState[] vqs;
    byte status;
    ulong driverFeatures;
    bool suspended;
    IotlbMap[] deviceMap = [];

    protected VdpaDevice(string name, uint deviceId, int nvqs, ulong supportedFeatures, int configSize)
    {
        Name = name;
        DeviceId = deviceId;
        Nvqs = nvqs;
        SupportedFeatures = supportedFeatures;
        Config = new byte[configSize];
        vqs = Enumerable.Range(0, nvqs).Select(_ => new VdpaVqState()).ToArray();
    }

    public string Name { get; }
    public uint DeviceId { get; }
    public int Nvqs { get; }
    /// <summary>What the device offers (ops->get_device_features).</summary>
    public ulong SupportedFeatures { get; }
    public int ConfigSize => Config.Length;
    public VdpaDeviceCounters Counters { get; } = new();
    public IReadOnlyList<VdpaVqState> Vqs => vqs;
    public bool Suspended { get { lock (Sync) return suspended; } }
    /// <summary>The map installed by the last set_map (what the device translates IOVAs through).</summary>
    public IReadOnlyList<IotlbMap> DeviceMap => Volatile.Read(ref deviceMap);

    // --- status and features --------------------------------------------------------------------------------------

    public byte GetStatus() { lock (Sync) return status; }

    public ulong DriverFeatures { get { lock (Sync) return driverFeatures; } }

    /// <summary>ops->set_status for a non-zero status. The device applies the spec's rules itself: FEATURES_OK stays
    /// clear when it cannot accept the negotiated set; DRIVER_OK without FEATURES_OK puts it in NEEDS_RESET.</summary>
    public void SetStatus(byte value)
    {
        lock (Sync)
        {
            var old = status;
            if ((value & FEATURES_OK) != 0 && (old & FEATURES_OK) == 0 && (driverFeatures & Bit(F_VERSION_1)) == 0)
            {
                // A modern-only device (ACCESS_PLATFORM) cannot accept a set without VERSION_1: leave FEATURES_OK clear.
                value = (byte)(value & ~FEATURES_OK);
                Counters.Error("FEATURES_OK without VERSION_1 (left clear)");
            }
            if ((value & DRIVER_OK) != 0 && (old & DRIVER_OK) == 0 && (value & FEATURES_OK) == 0)
            {
                status = (byte)(value | NEEDS_RESET);
                Counters.Error("DRIVER_OK before FEATURES_OK");
                return;
            }
            status = (byte)(value | (old & NEEDS_RESET));
            if ((value & DRIVER_OK) != 0 && (old & DRIVER_OK) == 0) OnDriverOk();
        }
    }

    /// <summary>ops->reset (vdpa_reset): everything back to the initial state; the device map too unless it persists.</summary>
    public void Reset(bool cleanMap)
    {
        lock (Sync)
        {
            OnReset();
            foreach (var vq in vqs)
            {
                vq.DescAddr = vq.DriverAddr = vq.DeviceAddr = 0;
                vq.Num = 0;
                vq.Ready = false;
                vq.LastAvailIdx = 0;
                vq.Callback = null;
            }
            status = 0;
            driverFeatures = 0;
            suspended = false;
            if (cleanMap) Volatile.Write(ref deviceMap, []);
            ResetConfig();
        }
    }

    /// <summary>ops->set_driver_features: the device requires ACCESS_PLATFORM ("DMA mapping must be done by driver").</summary>
    public int SetDriverFeatures(ulong features)
    {
        if ((features & Bit(F_ACCESS_PLATFORM)) == 0) return -Errno.EINVAL;
        lock (Sync) driverFeatures = features & SupportedFeatures;
        return 0;
    }

    public bool Negotiated(int bit) => (DriverFeatures & Bit(bit)) != 0;

    // --- config space -----------------------------------------------------------------------------------------------

    /// <summary>ops->get_config: bounds were checked by vhost-vdpa.</summary>
    public void GetConfig(uint offset, Span<byte> buffer)
    {
        lock (Sync) Config.AsSpan((int)offset, buffer.Length).CopyTo(buffer);
    }

    /// <summary>ops->set_config: the fields are read-only for these devices (vdpa_sim ignores writes); counted.</summary>
    public virtual void SetConfig(uint offset, ReadOnlySpan<byte> buffer) => Interlocked.Increment(ref Counters.ConfigWritesIgnored);

    /// <summary>Fills the config space with the device's values (at creation and at reset).</summary>
    protected abstract void ResetConfig();

    // --- virtqueues -------------------------------------------------------------------------------------------------

    public void SetVqAddress(int idx, ulong desc, ulong driver, ulong device)
    {
        lock (Sync) { vqs[idx].DescAddr = desc; vqs[idx].DriverAddr = driver; vqs[idx].DeviceAddr = device; }
    }

    public void SetVqNum(int idx, uint num) { lock (Sync) vqs[idx].Num = num; }
    public bool GetVqReady(int idx) { lock (Sync) return vqs[idx].Ready; }
    public ushort GetVqState(int idx) { lock (Sync) return CurrentAvailIdx(idx); }
    public void SetVqState(int idx, ushort availIdx) { lock (Sync) vqs[idx].LastAvailIdx = availIdx; }
    public void SetVqCallback(int idx, Action? callback) { lock (Sync) vqs[idx].Callback = callback; }

    public void SetVqReady(int idx, bool ready)
    {
        lock (Sync)
        {
            vqs[idx].Ready = ready;
            OnVqReady(idx, ready);
        }
    }

    /// <summary>ops->kick_vq: the driver added buffers; the device's worker processes them.</summary>
    public void KickVq(int idx)
    {
        Interlocked.Increment(ref Counters.Kicks);
        OnKick(idx);
    }

    /// <summary>ops->suspend: after it returns the device processes no more descriptors.</summary>
    public int Suspend() { lock (Sync) { suspended = true; OnSuspend(); } return 0; }

    /// <summary>ops->resume: processing continues where it stopped.</summary>
    public int Resume() { lock (Sync) { suspended = false; OnResume(); } return 0; }

    /// <summary>ops->set_map: replaces the device's IOMMU with the table. On failure the device map is left empty.</summary>
    public int SetMap(IReadOnlyList<IotlbMap> maps)
    {
        Interlocked.Increment(ref Counters.SetMaps);
        if (maps.Count > MaxIotlbEntries)
        {
            InstallMap([]);
            return -Errno.ENOSPC;
        }
        InstallMap(maps.ToArray());
        return 0;
    }

    protected virtual void InstallMap(IotlbMap[] maps) => Volatile.Write(ref deviceMap, maps);

    /// <summary>The spec's DEVICE_NEEDS_RESET: the device stops until the driver resets it; the cause is counted.</summary>
    protected void NeedsReset(string kind)
    {
        lock (Sync) status |= NEEDS_RESET;
        Counters.Error(kind);
    }

    protected virtual ushort CurrentAvailIdx(int idx) => vqs[idx].LastAvailIdx;
    protected virtual void OnDriverOk() { }
    protected virtual void OnReset() { }
    protected virtual void OnVqReady(int idx, bool ready) { }
    protected virtual void OnKick(int idx) { }
    protected virtual void OnSuspend() { }
    protected virtual void OnResume() { }

    public override string ToString() => $"{Name} (virtio id {DeviceId}, {Nvqs} vqs, status {StatusName(GetStatus())})";
}
