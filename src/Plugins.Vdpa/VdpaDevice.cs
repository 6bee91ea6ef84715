using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Native;
using VirtLab.Sdk.Virtio;
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
    /// <summary>The call eventfd the device signals (vhost-vdpa's virtqueue callback ends in eventfd_signal on it).</summary>
    public EventNotifier? Call;
    /// <summary>The kick eventfd the worker polls (vhost_poll on the SET_VRING_KICK fd).</summary>
    public EventNotifier? Kick;
    /// <summary>The device side of the ring, live between DRIVER_OK (or a late enable) and reset.</summary>
    public SplitQueueDevice? Queue;
}

/// <summary>What a device counted: requests, notifications, and every refused driver action by kind.</summary>
public sealed class VdpaDeviceCounters
{
    public long Kicks, Requests, Bytes, SetMaps, ConfigWritesIgnored, WorkerWakeups, RxNoBuffer;
    readonly Dictionary<string, long> errors = new();

    public IReadOnlyDictionary<string, long> Errors { get { lock (errors) return new Dictionary<string, long>(errors); } }
    public long ErrorTotal { get { lock (errors) return errors.Values.Sum(); } }

    internal void Error(string kind) { lock (errors) errors[kind] = errors.GetValueOrDefault(kind) + 1; }
}

/// <summary>
/// A vDPA parent device as drivers/vdpa/vdpa_sim models one: the vdpa_config_ops that vhost-vdpa calls (status,
/// features, config space, vq address/num/ready/state/callback, kick, set_map, suspend/resume), the device's own
/// IOMMU (an <see cref="IovaSpace"/> over the VM's guest-physical space that set_map fills: the device reaches guest
/// memory only through it), and one worker thread that polls the kick eventfds and runs the queues (a vhost worker).
/// A malformed ring breaks its queue (the SDK's <see cref="SplitQueueDevice"/> refuses it and counts the kind) and
/// the device sets NEEDS_RESET.
/// </summary>
public abstract class VdpaDevice : IDisposable
{
    /// <summary>VDPASIM_QUEUE_MAX: the largest ring the device supports (VHOST_VDPA_GET_VRING_NUM).</summary>
    public const ushort QueueMax = 256;
    /// <summary>vdpa_sim's max_iotlb_entries default: set_map with more entries fails (-ENOSPC) and leaves the map empty.</summary>
    public const int MaxIotlbEntries = 2048;

    protected readonly object Sync = new();
    protected readonly byte[] Config;
    readonly VdpaVqState[] vqs;
    readonly SplitQueueDevice?[] liveQueues;
    readonly EventNotifier wake;
    byte status;
    ulong driverFeatures;
    bool suspended;
    IovaSpace? iommu;
    Thread? worker;
    volatile bool stopping;
    int disposed;

    protected VdpaDevice(string name, uint deviceId, int nvqs, ulong supportedFeatures, int configSize)
    {
        Name = name;
        DeviceId = deviceId;
        Nvqs = nvqs;
        SupportedFeatures = supportedFeatures;
        Config = new byte[configSize];
        vqs = Enumerable.Range(0, nvqs).Select(_ => new VdpaVqState()).ToArray();
        liveQueues = new SplitQueueDevice?[nvqs];
        wake = new EventNotifier($"{name} worker wake");
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
    /// <summary>The device's IOMMU (filled by set_map); null before the device is bound to a VM.</summary>
    public IovaSpace? Iommu => iommu;
    /// <summary>The map installed by the last set_map (what the device translates IOVAs through).</summary>
    public IReadOnlyList<IovaMapping> DeviceMap => iommu?.Mappings ?? [];

    /// <summary>Binds the device to the VM whose memory it serves: creates its IOMMU and starts its worker.</summary>
    public void Bind(Vm vm)
    {
        lock (Sync)
        {
            if (iommu is not null)
            {
                if (iommu.Vm != vm) throw new InvalidOperationException($"{Name} is already bound to another VM");
                return;
            }
            iommu = new IovaSpace(vm.PhysicalSpace, $"{Name} IOMMU", VhostVdpa.IovaFirst, VhostVdpa.IovaLast);
            if (ManualWorker)
            {
                placed.Set();
                return;
            }
            worker = new Thread(WorkerLoop) { IsBackground = true, Name = $"vhost-{Name}" };
            worker.Start();
        }
        placed.Wait();      // the worker's placement (or why it failed) is known when Bind returns
    }

    readonly ManualResetEventSlim placed = new();

    /// <summary>The CPU the worker thread is to run on (<see cref="VdpaOptions.DeviceCpu"/>); null: wherever the
    /// scheduler puts it. Set before <see cref="Bind"/>.</summary>
    public int? WorkerCpu { get; internal set; }

    /// <summary>The CPUs the worker thread may run on, as the kernel reported them after placement (sched_getaffinity
    /// on the worker); empty in lock-step mode.</summary>
    public IReadOnlyList<int> WorkerCpus { get; private set; } = [];

    /// <summary>Where the worker runs, in words: "CPU 1", "any of 0-1 (not placed)", or why placement failed (the
    /// kernel's errno; the worker then runs unplaced).</summary>
    public string WorkerPlacement { get; private set; } = "none: lock-step";

    void PlaceWorker()
    {
        try
        {
            if (WorkerCpu is int cpu)
            {
                int errno = CpuAffinity.TrySetCurrentThread(cpu);
                WorkerCpus = CpuAffinity.OfCurrentThread();
                WorkerPlacement = errno == 0
                    ? $"CPU {cpu}"
                    : $"not placed: sched_setaffinity {Errno.Name(errno)}: {CpuAffinity.Explain(errno, [cpu])}";
            }
            else
            {
                WorkerCpus = CpuAffinity.OfCurrentThread();
                WorkerPlacement = $"any of {CpuAffinity.Format(WorkerCpus)} (not placed)";
            }
        }
        catch (Exception e) when (e is LibcException or DllNotFoundException or EntryPointNotFoundException)
        {
            WorkerPlacement = $"not placed: {e.Message}";
        }
        finally
        {
            placed.Set();
        }
    }

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
            if ((value & DRIVER_OK) != 0 && (old & DRIVER_OK) == 0)
                for (int i = 0; i < vqs.Length; i++)
                    if (vqs[i].Ready) StartQueue(i);
        }
        WakeWorker();
    }

    /// <summary>ops->reset (vdpa_reset): everything back to the initial state; the device map too unless it persists.</summary>
    public void Reset(bool cleanMap)
    {
        lock (Sync)
        {
            foreach (var vq in vqs)
            {
                vq.DescAddr = vq.DriverAddr = vq.DeviceAddr = 0;
                vq.Num = 0;
                vq.Ready = false;
                vq.LastAvailIdx = 0;
                vq.Call = null;
                vq.Queue = null;
            }
            status = 0;
            driverFeatures = 0;
            suspended = false;
            if (cleanMap) iommu?.Clear();
            OnReset();
            ResetConfig();
        }
        WakeWorker();
    }

    /// <summary>ops->set_driver_features: the device requires ACCESS_PLATFORM ("DMA mapping must be done by driver").</summary>
    public int SetDriverFeatures(ulong features)
    {
        if ((features & Bit(F_ACCESS_PLATFORM)) == 0) return -Errno.EINVAL;
        lock (Sync) driverFeatures = features & SupportedFeatures;
        return 0;
    }

    public bool Negotiated(int bit) => (DriverFeatures & Bit(bit)) != 0;

    public bool IsLive
    {
        get { lock (Sync) return (status & (DRIVER_OK | NEEDS_RESET)) == DRIVER_OK && !suspended; }
    }

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

    public ushort GetVqState(int idx)
    {
        lock (Sync) return vqs[idx].Queue?.LastAvailIdx ?? vqs[idx].LastAvailIdx;
    }

    public void SetVqState(int idx, ushort availIdx) { lock (Sync) vqs[idx].LastAvailIdx = availIdx; }

    public void SetVqCall(int idx, EventNotifier? call)
    {
        lock (Sync)
        {
            vqs[idx].Call = call;
            if (vqs[idx].Queue is { } q) q.Call = call;
        }
    }

    /// <summary>The kick eventfd the worker polls for this queue (vhost_poll_start / stop).</summary>
    public void SetVqKick(int idx, EventNotifier? kick)
    {
        lock (Sync) vqs[idx].Kick = kick;
        WakeWorker();
    }

    public void SetVqReady(int idx, bool ready)
    {
        lock (Sync)
        {
            vqs[idx].Ready = ready;
            if (!ready)
            {
                if (vqs[idx].Queue is { } q) vqs[idx].LastAvailIdx = q.LastAvailIdx;
                vqs[idx].Queue = null;
            }
            else if ((status & DRIVER_OK) != 0) StartQueue(idx);
        }
        WakeWorker();
    }

    /// <summary>ops->kick_vq: the driver added buffers; the worker processes them.</summary>
    public void KickVq(int idx)
    {
        Interlocked.Increment(ref Counters.Kicks);
        WakeWorker();
    }

    /// <summary>ops->suspend: after it returns the device processes no more descriptors.</summary>
    public int Suspend()
    {
        lock (Sync)
        {
            suspended = true;
            // The worker checks under the same lock before each queue pass.
        }
        return 0;
    }

    /// <summary>ops->resume: processing continues where it stopped.</summary>
    public int Resume()
    {
        lock (Sync) suspended = false;
        WakeWorker();
        return 0;
    }

    /// <summary>ops->set_map: replaces the device's IOMMU with the table. On failure the device map is left empty.</summary>
    public int SetMap(IReadOnlyList<IovaMapping> maps)
    {
        Interlocked.Increment(ref Counters.SetMaps);
        var space = iommu ?? throw new InvalidOperationException($"{Name} is not bound to a VM");
        // One publication of the whole table (vdpasim's set_map: reset, then add every entry).
        if (maps.Count > MaxIotlbEntries)
        {
            space.Clear();
            return -Errno.ENOSPC;
        }
        if (!space.TryReplace(maps))
        {
            space.Clear();
            return -Errno.EEXIST;
        }
        return 0;
    }

    void StartQueue(int idx)
    {
        var vq = vqs[idx];
        if (vq.Queue is not null) return;
        if (vq.Num == 0 || vq.Num > QueueMax || !SplitRing.IsValidSize((int)vq.Num))
        {
            NeedsResetLocked($"queue {idx} size {vq.Num} (device maximum {QueueMax})");
            return;
        }
        var ring = new SplitRing((int)vq.Num, vq.DescAddr, vq.DriverAddr, vq.DeviceAddr);
        try
        {
            ring.Validate();
        }
        catch (ArgumentException e)
        {
            NeedsResetLocked($"queue {idx} ring layout: {e.Message}");
            return;
        }
        var q = new SplitQueueDevice(iommu!, ring, (VirtioFeatures)driverFeatures, vq.Call, $"{Name} vq{idx}", vq.LastAvailIdx);
        q.Broken += (broken, err) =>
        {
            lock (Sync)
                if (vq.Queue == broken) NeedsResetLocked($"vq{idx}: {err.Kind}");   // not for a queue a reset already replaced
        };
        vq.Queue = q;
    }

    /// <summary>The spec's DEVICE_NEEDS_RESET: the device stops until the driver resets it; the cause is counted.</summary>
    protected void NeedsReset(string kind)
    {
        lock (Sync) NeedsResetLocked(kind);
    }

    void NeedsResetLocked(string kind)
    {
        status |= NEEDS_RESET;
        Counters.Error(kind);
    }

    protected void WakeWorker()
    {
        if (Volatile.Read(ref disposed) == 0 && !wake.IsDisposed) wake.Signal();
    }

    // --- the worker (a vhost worker thread) ---------------------------------------------------------------------------

    void WorkerLoop()
    {
        PlaceWorker();
        var set = new List<EventNotifier>();
        var ready = new bool[Nvqs + 1];
        while (!stopping)
        {
            CollectNotifiers(set);
            try
            {
                // Only the eventfds poll(2) reported are read: the others' reads would return EAGAIN (one or two
                // syscalls per wake-up saved). A signal that lands after the poll stays pending for the next one.
                NotifierPoll.WaitAny(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(set), ready.AsSpan(0, set.Count), TimeSpan.FromMilliseconds(200));
                DrainNotifiers(set, ready);
            }
            catch (ObjectDisposedException) { continue; }
            if (stopping) break;
            Interlocked.Increment(ref Counters.WorkerWakeups);
            RunQueues();
        }
    }

    void CollectNotifiers(List<EventNotifier> set)
    {
        set.Clear();
        set.Add(wake);
        lock (Sync)
            foreach (var vq in vqs)
                if (vq.Kick is { IsDisposed: false } k && !set.Contains(k)) set.Add(k);
    }

    /// <summary>Reads (resets) every notifier of the set, or those marked <paramref name="ready"/>; true when any was
    /// signalled. Kicks are counted.</summary>
    bool DrainNotifiers(List<EventNotifier> set, bool[]? ready = null)
    {
        bool any = (ready is null || ready[0]) && wake.TryRead(out _);
        for (int i = 1; i < set.Count; i++)
            if ((ready is null || ready[i]) && !set[i].IsDisposed && set[i].TryRead(out _))
            {
                Interlocked.Increment(ref Counters.Kicks);
                any = true;
            }
        return any;
    }

    /// <summary>Lock-step mode (<see cref="VdpaOptions.LockStep"/>, tests): no worker thread; the driver steps the
    /// device with <see cref="RunPending"/> on its own thread.</summary>
    internal bool ManualWorker { get; set; }

    /// <summary>True when the device has no worker thread and is stepped with <see cref="RunPending"/>.</summary>
    public bool LockStep => ManualWorker;

    List<EventNotifier>? pendingSet;

    /// <summary>
    /// Lock-step mode: what the worker does when poll(2) returns, on the calling thread — reads the kick eventfds and,
    /// if one was signalled (or the device was woken by a status change), runs one pass over the queues (until they
    /// are empty and the kicks re-armed, as the worker does). Returns whether it ran: false means nobody kicked, so
    /// a worker would still be asleep. The interleaving of driver and device is then the caller's program order, and
    /// every count (kicks, interrupts, wake-ups) is exact.
    /// </summary>
    public bool RunPending()
    {
        if (!ManualWorker) throw new InvalidOperationException($"{Name}: the device has its own worker thread; RunPending is for lock-step mode");
        var set = pendingSet ??= new List<EventNotifier>();
        CollectNotifiers(set);
        if (!DrainNotifiers(set)) return false;
        Interlocked.Increment(ref Counters.WorkerWakeups);
        RunQueues();
        return true;
    }

    /// <summary>Tests: one worker pass on the calling thread, kicked or not.</summary>
    internal void RunOnce() => RunQueues();

    /// <summary>One pass over the queues, as long as they have work (the worker calls it after each wake-up).</summary>
    void RunQueues()
    {
        var live = liveQueues; // one pass at a time (the worker, or a test's RunOnce): reused, no allocation per wake-up
        lock (Sync)
        {
            if ((status & (DRIVER_OK | NEEDS_RESET)) != DRIVER_OK || suspended) return;
            for (int i = 0; i < vqs.Length; i++) live[i] = vqs[i].Ready ? vqs[i].Queue : null;
        }
        try
        {
            Process(live);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // Nothing the driver writes may crash the device: record it as a device error and stop.
            NeedsReset("device: " + e.GetType().Name + ": " + e.Message);
        }
    }

    /// <summary>Handles what is available on the live queues (null where a queue is not running). Runs on the worker.</summary>
    protected abstract void Process(SplitQueueDevice?[] queues);

    /// <summary>True while the device may keep processing (not suspended, not reset, not broken).</summary>
    protected bool ShouldRun
    {
        get { lock (Sync) return !stopping && (status & (DRIVER_OK | NEEDS_RESET)) == DRIVER_OK && !suspended; }
    }

    protected virtual void OnReset() { }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        stopping = true;
        wake.Signal();
        worker?.Join();
        wake.Dispose();
        placed.Dispose();
        GC.SuppressFinalize(this);
    }

    public override string ToString() => $"{Name} (virtio id {DeviceId}, {Nvqs} vqs, status {StatusName(GetStatus())})";
}
