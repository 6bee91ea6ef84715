using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Virtio;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;

namespace VirtLab.Plugins.Vdpa;

/// <summary>How the driver gives the device its memory: IOTLB messages (v2, batched or not) or the seed's SET_MEM_TABLE.</summary>
public enum VdpaMemoryPath { Iotlb, IotlbUnbatched, MemTable }

/// <summary>Options shared by the net and block drivers.</summary>
public record VdpaOptions
{
    /// <summary>Negotiate VIRTIO_RING_F_EVENT_IDX (used_event / avail_event instead of the flags).</summary>
    public bool EventIdx { get; init; } = true;
    /// <summary>Negotiate VIRTIO_RING_F_INDIRECT_DESC and put multi-buffer chains in indirect tables.</summary>
    public bool Indirect { get; init; }
    /// <summary>Ring size (power of two, at most the device's 256).</summary>
    public int QueueSize { get; init; } = 256;
    public VdpaMemoryPath Memory { get; init; } = VdpaMemoryPath.Iotlb;
    /// <summary>
    /// No device worker thread: where the driver would sleep until an interrupt, it runs the device's pending work on
    /// its own thread instead (<see cref="VdpaDevice.RunPending"/>). Driver and device then interleave in program
    /// order, so notification counts are exact and reproducible, and a lost kick or interrupt is an error at once
    /// instead of a stall. For tests and for explaining counts; not for throughput.
    /// </summary>
    public bool LockStep { get; init; }
    /// <summary>
    /// The CPU the device's worker thread runs on (sched_setaffinity on the worker, as vhost workers are placed in
    /// benchmarks: apart from the driver's CPU, so that wake-ups do not pull both threads onto one). Null (default):
    /// wherever the scheduler puts it. A CPU the kernel refuses (EINVAL, EPERM) leaves the worker unplaced and says
    /// why in <see cref="VdpaDevice.WorkerPlacement"/>; it does not fail the device.
    /// </summary>
    public int? DeviceCpu { get; init; }
}

/// <summary>
/// A virtio driver over a vhost-vdpa char device, attached to a VM: it allocates a memslot for its rings and
/// buffers ("guest memory the guest driver allocated"), runs the spec's initialisation over the vhost-vdpa ioctls
/// (reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, rings, IOTLB or SET_MEM_TABLE, DRIVER_OK), and keeps the
/// driver sides of the queues. IOVA = gpa for the driver's memory (what QEMU does without a vIOMMU).
/// </summary>
public abstract class VdpaDriver : VmDevice, Sdk.IDisplayable
{
    protected readonly VdpaOptions Options;
    readonly EventFdTable fds = new();
    MemSlot? slot;
    ulong next;

    protected VdpaDriver(string name, VdpaDevice device, VdpaOptions options) : base(name)
    {
        Options = options;
        Device = device;
        if (options.LockStep) device.ManualWorker = true;   // before OnAttach binds it (no worker thread)
        if (options.DeviceCpu is < 0)
            throw new ArgumentOutOfRangeException(nameof(options), options.DeviceCpu, "DeviceCpu is a CPU number (0 or more), or null for no placement");
        device.WorkerCpu = options.DeviceCpu;
        if (!SplitRing.IsValidSize(options.QueueSize) || options.QueueSize > VdpaDevice.QueueMax)
            throw new ArgumentOutOfRangeException(nameof(options), options.QueueSize,
                $"queue size must be a power of two from 1 to {VdpaDevice.QueueMax} (the device's maximum)");
    }

    public VdpaDevice Device { get; }
    /// <summary>The vhost-vdpa file the driver talks through (both doors: typed methods and Ioctl/Write bytes).</summary>
    public VhostVdpa Vhost { get; private set; } = null!;
    public SplitQueueDriver[] Queues { get; private set; } = [];
    public EventNotifier[] Kicks { get; private set; } = [];
    public EventNotifier[] Calls { get; private set; } = [];
    /// <summary>The memslot holding the driver's rings and buffers.</summary>
    public MemSlot DmaSlot => slot ?? throw new InvalidOperationException($"{Name} is not attached");
    public ulong NegotiatedFeatures { get; private set; }
    public int QueueSize { get; private set; }
    public TimeSpan InitTime { get; private set; }

    /// <summary>Bytes of driver memory the device needs besides the rings.</summary>
    protected abstract long BufferBytes(int queueSize);

    /// <summary>Device-specific feature bits the driver wants.</summary>
    protected abstract ulong WantedDeviceFeatures { get; }

    /// <summary>After DRIVER_OK: post buffers etc.</summary>
    protected abstract void Started();

    protected Vm TheVm => AttachedVm;

    protected override void OnAttach(Vm vm)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int qs = Options.QueueSize, n = Device.Nvqs;
        long ringBytes = Align(SplitRing.ContiguousBytes(qs), 4096);
        long indirectBytes = Options.Indirect ? Align(new IndirectArea(0, 8).Bytes(qs), 4096) : 0;
        long bytes = Align(n * (ringBytes + indirectBytes) + BufferBytes(qs), 2L << 20);
        slot = vm.AddSlot(new VirtLab.Sdk.Measure.Size(bytes));
        next = slot.Gpa;
        try
        {
            Vhost = new VhostVdpa(Device, vm, fds.Resolve);
            Initialise(vm, qs, ringBytes, indirectBytes);
        }
        catch
        {
            Device.Dispose();
            vm.RemoveSlot(slot.Id);
            slot = null;
            throw;
        }
        InitTime = sw.Elapsed;
    }

    static long Align(long v, long a) => (v + a - 1) / a * a;

    /// <summary>Carves <paramref name="bytes"/> out of the driver's memslot (page aligned); returns the gpa (= IOVA).</summary>
    protected ulong Allocate(long bytes)
    {
        var gpa = next;
        next += (ulong)Align(bytes, 4096);
        if (next > DmaSlot.EndGpa) throw new InvalidOperationException($"{Name}: driver memory exhausted ({DmaSlot.Size})");
        return gpa;
    }

    void Initialise(Vm vm, int qs, long ringBytes, long indirectBytes)
    {
        var v = Vhost;
        v.SetOwner();
        ulong wantBackend = 1UL << Uapi.Vhost.VHOST_BACKEND_F_IOTLB_MSG_V2 | 1UL << Uapi.Vhost.VHOST_BACKEND_F_IOTLB_BATCH |
                            1UL << Uapi.Vhost.VHOST_BACKEND_F_IOTLB_PERSIST;
        v.SetBackendFeatures(v.GetBackendFeatures() & wantBackend);

        v.Reset();
        v.SetStatus(ACKNOWLEDGE);
        v.AddStatus(DRIVER);
        ulong want = Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | WantedDeviceFeatures |
                     (Options.EventIdx ? Bit(RING_F_EVENT_IDX) : 0) | (Options.Indirect ? Bit(RING_F_INDIRECT_DESC) : 0);
        ulong offered = v.GetFeatures();
        if ((offered & Bit(F_ACCESS_PLATFORM)) == 0 || (offered & Bit(F_VERSION_1)) == 0)
            throw new InvalidOperationException($"{Name}: the device does not offer VERSION_1 and ACCESS_PLATFORM ({FeatureNames(offered, Device.DeviceId)})");
        NegotiatedFeatures = offered & want;
        v.SetFeatures(NegotiatedFeatures);
        v.AddStatus(FEATURES_OK);
        if ((v.GetStatus() & FEATURES_OK) == 0)
        {
            v.AddStatus(FAILED);
            throw new InvalidOperationException($"{Name}: the device did not accept {FeatureNames(NegotiatedFeatures, Device.DeviceId)}");
        }

        QueueSize = Math.Min(qs, v.GetVringNum());
        int n = Device.Nvqs;
        Queues = new SplitQueueDriver[n];
        Kicks = new EventNotifier[n];
        Calls = new EventNotifier[n];
        var rings = new SplitRing[n];
        for (int i = 0; i < n; i++)
        {
            rings[i] = SplitRing.Contiguous(Allocate(ringBytes), QueueSize);
            IndirectArea? ind = Options.Indirect ? new IndirectArea(Allocate(indirectBytes), 8) : null;
            Kicks[i] = fds.Register(new EventNotifier($"{Name} vq{i} kick"));
            Calls[i] = fds.Register(new EventNotifier($"{Name} vq{i} call"));
            Queues[i] = new SplitQueueDriver(vm.PhysicalSpace, rings[i], (VirtioFeatures)NegotiatedFeatures, Kicks[i], ind, $"{Name} vq{i}");
        }

        // The device may reach only the driver's memslot, through its IOTLB.
        var s = DmaSlot;
        switch (Options.Memory)
        {
            case VdpaMemoryPath.MemTable:
                v.SetMemTable([(s.Gpa, (ulong)s.Size.Bytes, (ulong)s.HostAddress)]);
                break;
            case VdpaMemoryPath.Iotlb:
                v.BatchBegin();
                v.Map(s.Gpa, (ulong)s.Size.Bytes, s.Gpa);
                v.BatchEnd();
                break;
            default:
                v.Map(s.Gpa, (ulong)s.Size.Bytes, s.Gpa);
                break;
        }

        for (uint i = 0; i < n; i++)
        {
            var r = rings[i];
            v.SetVringNum(i, (uint)QueueSize);
            v.SetVringAddr(i, r.DescAddress, r.AvailAddress, r.UsedAddress);
            v.SetVringBase(i, 0);
            v.SetVringKick(i, Kicks[i].Fd);
            v.SetVringCall(i, Calls[i].Fd);
            v.SetVringEnable(i, true);
        }
        v.AddStatus(DRIVER_OK);
        if ((v.GetStatus() & NEEDS_RESET) != 0)
            throw new InvalidOperationException($"{Name}: the device needs a reset right after DRIVER_OK ({string.Join(", ", Device.Counters.Errors.Keys)})");
        Started();
    }

    /// <summary>The device status as the driver reads it (VHOST_VDPA_GET_STATUS).</summary>
    public byte Status => Vhost.GetStatus();

    /// <summary>Kicks the driver sent and interrupts the device sent, over all queues.</summary>
    public (long Kicks, long Interrupts, long KicksSuppressed, long InterruptsSuppressed) Notifications =>
        (Kicks.Sum(k => k.Sent), Calls.Sum(c => c.Sent), Kicks.Sum(k => k.Suppressed), Calls.Sum(c => c.Suppressed));

    /// <summary>
    /// Sleeps until the device signals queue <paramref name="queue"/>'s call eventfd (true) or the timeout passes
    /// (false). In lock-step mode the device's pending work runs here instead, and the answer is whether it signalled.
    /// </summary>
    protected bool WaitForCall(int queue, TimeSpan timeout, CancellationToken cancellation = default)
    {
        if (!Options.LockStep) return Calls[queue].Wait(timeout, cancellation);
        Device.RunPending();
        return Calls[queue].TryRead(out _);
    }

    /// <summary>What a driver waiting in vain says: a timeout, or in lock-step mode a lost notification (nothing was
    /// pending, or the device ran and did not interrupt though the driver asked for it).</summary>
    protected Exception NoCall(int queue, string what) => Options.LockStep
        ? new InvalidOperationException($"{Name}: lock-step: {what} — the driver waits on vq{queue}, and the device had no kick pending or did not interrupt (a lost notification; device status {StatusName(Device.GetStatus())})")
        : new TimeoutException($"{Name}: {what} within 5 s (device status {StatusName(Device.GetStatus())})");

    /// <summary>Throws when the device stopped (NEEDS_RESET), naming why.</summary>
    protected void ThrowIfBroken()
    {
        var st = Device.GetStatus();
        if ((st & NEEDS_RESET) != 0)
            throw new InvalidOperationException($"{Name}: the device set NEEDS_RESET ({string.Join(", ", Device.Counters.Errors.Select(e => $"{e.Key} ×{e.Value}"))})");
    }

    protected override void Dispose(bool disposing)
    {
        if (!disposing) return;
        try { if (Vhost is not null && !(Vm?.IsDisposed ?? true)) Vhost.Reset(); } catch (Exception) { /* the VM is going away */ }
        Device.Dispose();
        foreach (var k in Kicks) k.Dispose();
        foreach (var c in Calls) c.Dispose();
        if (slot is not null && Vm is { IsDisposed: false } vm)
        {
            try { vm.RemoveSlot(slot.Id); } catch (ObjectDisposedException) { }
        }
    }

    public override string Summary =>
        IsDisposed ? "disposed" : $"{StatusName(Device.GetStatus())}, {Device.Nvqs} queues of {QueueSize}, {Device.Counters.Requests:N0} requests, {Device.Counters.ErrorTotal} errors";

    public virtual IRenderable ToRenderable()
    {
        var grid = new Grid().AddColumn();
        var head = new Table { Title = new TableTitle(Markup.Escape($"{Name}: vhost-vdpa over {Device.Name}")) }.AddColumn("").AddColumn("");
        head.AddRow("status", Markup.Escape(StatusName(Device.GetStatus())));
        head.AddRow("features", Markup.Escape(FeatureNames(NegotiatedFeatures, Device.DeviceId)));
        head.AddRow("backend features", Markup.Escape(Uapi.Vhost.BackendFeatureNames(Vhost.AckedBackendFeatures)));
        head.AddRow("memory", Markup.Escape($"{Options.Memory}: {Device.DeviceMap.Count} IOTLB mapping(s), slot {DmaSlot.Id} at 0x{DmaSlot.Gpa:x} ({DmaSlot.Size})"));
        var (k, i, ks, isup) = Notifications;
        head.AddRow("notifications", $"{k:N0} kicks ({ks:N0} suppressed), {i:N0} interrupts ({isup:N0} suppressed)");
        head.AddRow("device", $"{Device.Counters.Requests:N0} requests, {Device.Counters.WorkerWakeups:N0} worker wake-ups, {Device.Counters.RxNoBuffer:N0} waits for buffers");
        head.AddRow("worker", Device.LockStep ? "none: lock-step, the driver runs the device where it would sleep" : Markup.Escape($"thread vhost-{Device.Name}, {Device.WorkerPlacement}"));
        grid.AddRow(head);
        var q = new Table { Title = new TableTitle("queues") };
        foreach (var c in new[] { "vq", "size", "driver avail", "driver used", "in flight", "device last_avail", "kicks", "interrupts", "state" }) q.AddColumn(c);
        for (int n = 0; n < Queues.Length; n++)
        {
            var d = Device.Vqs[n].Queue;
            q.AddRow(n.ToString(), QueueSize.ToString(), Queues[n].AvailIdx.ToString(), Queues[n].LastUsedIdx.ToString(),
                Queues[n].InFlight.ToString(), d?.LastAvailIdx.ToString() ?? "-", Kicks[n].Sent.ToString("N0"), Calls[n].Sent.ToString("N0"),
                Markup.Escape(d is null ? "stopped" : d.IsBroken ? "broken: " + d.Error!.Kind : "running"));
        }
        grid.AddRow(q);
        var errors = Device.Counters.Errors;
        if (errors.Count > 0)
        {
            var e = new Table { Title = new TableTitle("device errors") }.AddColumn("kind").AddColumn("count");
            foreach (var (kind, count) in errors) e.AddRow(Markup.Escape(kind), count.ToString("N0"));
            grid.AddRow(e);
        }
        return grid;
    }
}
