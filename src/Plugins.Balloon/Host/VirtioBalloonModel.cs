using System.Buffers.Binary;
using System.Diagnostics;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Virtio;

namespace VirtLab.Plugins.Balloon.Host;

/// <summary>
/// The virtio-balloon device (the host side, QEMU's hw/virtio/virtio-balloon.c in spirit): the transport registers a
/// driver reaches (features, status, queue setup, the notify doorbell, ISR, config space) and a device thread that
/// serves the inflate, deflate, stats and free-page-reporting queues in guest memory through
/// <see cref="Vm.PhysicalSpace"/>. Every request is checked whole before anything happens; a refused one is counted
/// by <see cref="BalloonErrorKind"/>, returned to the driver with length 0, and the device goes on.
/// </summary>
internal sealed class VirtioBalloonModel : IDisposable
{
    public const int QueueSize = 128; // QEMU's

    readonly Vm vm;
    readonly DiscardEngine engine;
    readonly Lock regLock = new();
    readonly Lock serviceLock = new(); // held while the device thread serves the queues; a reset waits for it (taken before regLock)
    readonly EventNotifier doorbell = new("balloon notify");
    readonly Thread thread;
    readonly CancellationTokenSource stop = new();
    readonly long[] refused = new long[Enum.GetValues<BalloonErrorKind>().Length];
    readonly SplitRing?[] rings = new SplitRing?[5];
    readonly byte[] scratch = new byte[PageBitmapFormat.ResponseHeaderSize + PageBitmapFormat.MaxDataSize];
    readonly List<PageRun> runs = [];
    readonly List<(ulong, long)> reported = [];
    SplitQueueDevice? inflateQ, deflateQ, statsQ, reportQ;
    VirtqChain? statsChain;
    ulong driverFeatures;
    byte status;
    int isr;
    uint numPages, actual;
    DeviceTicks ticks;
    long requests, statsUpdates, statsUnknownTags, reportedBytes;
    readonly ulong?[] stats = new ulong?[VirtioBalloon.StatTags];
    long statsInterval; // Stopwatch ticks; 0 = off
    long nextStats;
    volatile bool statsWanted;

    public VirtioBalloonModel(Vm vm, ulong offered, DiscardMode discard, DeflateHint deflate, bool wholeThpPages)
    {
        this.vm = vm;
        DeviceFeatures = offered;
        Discard = discard;
        Deflate = deflate;
        engine = new DiscardEngine(vm, wholeThpPages);
        Irq = new EventNotifier("balloon irq");
        thread = new Thread(Run) { IsBackground = true, Name = "virtio-balloon device" };
        thread.Start();
    }

    public ulong DeviceFeatures { get; }
    public DiscardMode Discard { get; set; }
    public DeflateHint Deflate { get; set; }

    /// <summary>The interrupt line (INTx-style: one for every queue and the config change; <see cref="ReadIsr"/> says which).</summary>
    public EventNotifier Irq { get; }

    /// <summary>Raised on the driver's thread when it writes <c>actual</c> (QEMU's set_config).</summary>
    public event Action<uint>? ActualChanged;

    public uint NumPages { get { lock (regLock) return numPages; } }
    public uint Actual { get { lock (regLock) return actual; } }
    public ulong NegotiatedFeatures { get { lock (regLock) return driverFeatures; } }
    public byte Status { get { lock (regLock) return status; } }
    public DiscardEngine Engine => engine;
    public long Requests => Interlocked.Read(ref requests);
    public long StatsUpdates => Interlocked.Read(ref statsUpdates);
    public long StatsUnknownTags => Interlocked.Read(ref statsUnknownTags);
    public long ReportedBytes => Interlocked.Read(ref reportedBytes);

    public DeviceTicks Ticks { get { lock (regLock) return ticks; } }

    public long Refused(BalloonErrorKind kind) => Interlocked.Read(ref refused[(int)kind]);

    public IReadOnlyDictionary<string, long> ErrorCounters
    {
        get
        {
            var d = new SortedDictionary<string, long>();
            foreach (var k in Enum.GetValues<BalloonErrorKind>()) if (Refused(k) > 0) d[k.ToString()] = Refused(k);
            foreach (var q in new[] { inflateQ, deflateQ, statsQ, reportQ })
                if (q is not null)
                    foreach (var (k, n) in q.Errors) d[$"{q.Name} {k}"] = n;
            if (ticks.DiscardErrors > 0) d["discard failures"] = ticks.DiscardErrors;
            return d;
        }
    }

    public BalloonError? LastError { get; private set; }

    public IReadOnlyList<SplitQueueDevice> Queues => new[] { inflateQ, deflateQ, statsQ, reportQ }.OfType<SplitQueueDevice>().ToArray();

    /// <summary>The last stats the guest sent (tags 0–9; null = not reported), and when.</summary>
    public (ulong?[] Values, DateTime? At) Stats { get { lock (regLock) return ((ulong?[])stats.Clone(), statsAt); } }
    DateTime? statsAt;

    // ---- transport registers (the driver's side of the device) -------------------------------------------------

    public void WriteDriverFeatures(ulong features)
    {
        lock (regLock)
        {
            if ((status & (byte)VirtioDeviceStatus.FeaturesOk) != 0)
                throw new InvalidOperationException("driver features written after FEATURES_OK (the device ignores it)");
            driverFeatures = features & DeviceFeatures;
        }
    }

    /// <summary>The status register. Setting FEATURES_OK checks the feature set (the bit stays clear if refused);
    /// DRIVER_OK brings the queues up; 0 resets the device.</summary>
    public byte ReadStatus() { lock (regLock) return status; }

    public void WriteStatus(byte value)
    {
        if (value == 0)
        {
            // A reset waits until the device thread is out of the queues: after it, nothing writes the old rings.
            lock (serviceLock) lock (regLock) ResetLocked();
            return;
        }
        lock (regLock)
        {
            var v = (VirtioDeviceStatus)value;
            if (v.HasFlag(VirtioDeviceStatus.FeaturesOk) && (status & (byte)VirtioDeviceStatus.FeaturesOk) == 0)
            {
                bool both = VirtioBalloon.Has(driverFeatures, VirtioBalloon.F_PAGE_BITMAP) && VirtioBalloon.Has(driverFeatures, VirtioBalloon.F_PAGE_RANGES);
                if (both) value &= unchecked((byte)~VirtioDeviceStatus.FeaturesOk); // PAGE_BITMAP and PAGE_RANGES exclude each other
            }
            if (v.HasFlag(VirtioDeviceStatus.DriverOk) && (status & (byte)VirtioDeviceStatus.DriverOk) == 0) StartQueuesLocked();
            status = value;
        }
        doorbell.Signal();
    }

    public void SetQueue(int index, SplitRing ring)
    {
        lock (regLock)
        {
            if ((status & (byte)VirtioDeviceStatus.DriverOk) != 0) throw new InvalidOperationException("queues are set up before DRIVER_OK");
            if (index < 0 || index >= rings.Length) throw new ArgumentOutOfRangeException(nameof(index), $"virtio-balloon has queues 0 … {rings.Length - 1}; got {index}");
            if (ring.Size > QueueSize) throw new ArgumentOutOfRangeException(nameof(ring), $"queue size {ring.Size} is above the device's maximum {QueueSize}");
            rings[index] = ring;
        }
    }

    /// <summary>The notify doorbell every driver queue kicks (the queue-notify register; one device thread serves all queues).</summary>
    public EventNotifier Doorbell => doorbell;

    /// <summary>Read-to-clear ISR: bit 0 = a queue has used buffers, bit 1 = the config changed.</summary>
    public int ReadIsr() => Interlocked.Exchange(ref isr, 0);

    public uint ReadConfig(int offset)
    {
        lock (regLock)
            return offset switch
            {
                VirtioBalloon.ConfigNumPages => numPages,
                VirtioBalloon.ConfigActual => actual,
                VirtioBalloon.ConfigFreePageHintCmdId or VirtioBalloon.ConfigPoisonVal => 0,
                _ => throw new ArgumentOutOfRangeException(nameof(offset), $"virtio_balloon_config has le32 fields at 0, 4, 8, 12; got offset {offset}"),
            };
    }

    /// <summary>The driver writes <c>actual</c> (the only field it may write here).</summary>
    public void WriteConfig(int offset, uint value)
    {
        if (offset != VirtioBalloon.ConfigActual)
            throw new ArgumentOutOfRangeException(nameof(offset), $"the driver writes only 'actual' (offset 4) of virtio_balloon_config; got offset {offset}");
        lock (regLock) actual = value;
        ActualChanged?.Invoke(value);
    }

    // ---- host side ---------------------------------------------------------------------------------------------

    /// <summary>The host asks the guest to hold <paramref name="pages"/> 4 KiB pages in the balloon (config change interrupt).</summary>
    public void SetNumPages(uint pages)
    {
        lock (regLock) numPages = pages;
        Interlocked.Or(ref isr, 2);
        Irq.Signal();
    }

    /// <summary>Asks the guest for fresh stats now (gives the held stats buffer back), and every <paramref name="interval"/> if given.</summary>
    public void RequestStats(TimeSpan? interval = null)
    {
        if (interval is { } i) Interlocked.Exchange(ref statsInterval, i <= TimeSpan.Zero ? 0 : (long)(i.TotalSeconds * Stopwatch.Frequency));
        statsWanted = true;
        doorbell.Signal();
    }

    public bool StatsSupported => VirtioBalloon.Has(NegotiatedFeatures, VirtioBalloon.F_STATS_VQ);

    void ResetLocked()
    {
        status = 0;
        driverFeatures = 0;
        actual = 0;
        Array.Clear(rings);
        inflateQ = deflateQ = statsQ = reportQ = null;
        statsChain = null;
        Interlocked.Exchange(ref isr, 0);
    }

    void StartQueuesLocked()
    {
        var f = driverFeatures;
        var (inf, def, st, _, rep) = VirtioBalloon.QueueIndexes(f);
        var vf = (VirtioFeatures)f;
        SplitQueueDevice Make(int i, string name)
        {
            var ring = rings[i] ?? throw new InvalidOperationException($"DRIVER_OK before queue {i} ({name}) was set up");
            var q = new SplitQueueDevice(vm.PhysicalSpace, ring, vf, Irq, name: name);
            return q;
        }
        inflateQ = Make(inf, "inflateq");
        deflateQ = Make(def, "deflateq");
        statsQ = st >= 0 ? Make(st, "statsq") : null;
        reportQ = rep >= 0 ? Make(rep, "reporting_vq") : null;
    }

    // ---- the device thread -------------------------------------------------------------------------------------

    void Run()
    {
        var ct = stop.Token;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                var wait = Timeout.InfiniteTimeSpan;
                var interval = Interlocked.Read(ref statsInterval);
                if (interval > 0)
                {
                    var now = Stopwatch.GetTimestamp();
                    if (nextStats == 0) nextStats = now + interval;
                    wait = now >= nextStats ? TimeSpan.Zero : Stopwatch.GetElapsedTime(now, nextStats);
                }
                doorbell.Wait(wait, ct);
                doorbell.Read();
                if (interval > 0 && Stopwatch.GetTimestamp() >= nextStats)
                {
                    statsWanted = true;
                    nextStats = Stopwatch.GetTimestamp() + interval;
                }
                Service();
            }
        }
        catch (OperationCanceledException) { }
        catch (ObjectDisposedException) { }
    }

    void Service()
    {
        try
        {
            lock (serviceLock) ServiceLocked();
        }
        catch (Exception e) when (e is not OperationCanceledException and not ObjectDisposedException)
        {
            // A device bug must not take the process down: the device stops serving and asks for a reset, as a broken one would.
            Failure = e;
            lock (regLock) status |= (byte)VirtioDeviceStatus.NeedsReset;
            Interlocked.Or(ref isr, 2);
            Irq.Signal();
        }
    }

    /// <summary>An unexpected error on the device thread (the device then needs a reset), or null.</summary>
    public Exception? Failure { get; private set; }

    void ServiceLocked()
    {
        SplitQueueDevice? inf, def, st, rep;
        lock (regLock)
        {
            if ((status & (byte)VirtioDeviceStatus.DriverOk) == 0 || (status & (byte)VirtioDeviceStatus.NeedsReset) != 0) return;
            (inf, def, st, rep) = (inflateQ, deflateQ, statsQ, reportQ);
        }
        bool any = ServeQueue(inf!, inflate: true) | ServeQueue(def!, inflate: false);
        if (rep is not null) any |= ServeReporting(rep);
        if (st is not null) any |= ServeStats(st);
        if (any) Interlocked.Or(ref isr, 1);
        foreach (var q in new[] { inf, def, st, rep }) if (q is not null && q.Flush()) { }
    }

    /// <summary>Pops chains until the ring is empty. A chain that breaks the ring rules is counted and skipped: the queue is
    /// resynchronised past it (its head is lost to the driver), so later good requests are still served.</summary>
    bool TryPopResilient(SplitQueueDevice q, out VirtqChain chain)
    {
        for (int attempt = 0; attempt < 4; attempt++)
        {
            var at = q.LastAvailIdx;
            if (q.TryPop(out chain)) return true;
            if (!q.IsBroken) return false;
            Count(new BalloonError(BalloonErrorKind.BadChain, q.Error!.ToString()));
            q.Reset((ushort)(at + 1));
        }
        // A ring that keeps faulting (its memory is gone, the index jumps): needs a driver reset.
        lock (regLock) status |= (byte)VirtioDeviceStatus.NeedsReset;
        Interlocked.Or(ref isr, 2);
        Irq.Signal();
        chain = null!;
        return false;
    }

    bool ServeQueue(SplitQueueDevice q, bool inflate)
    {
        bool served = false;
        while (TryPopResilient(q, out var chain))
        {
            served = true;
            Interlocked.Increment(ref requests);
            var local = new DeviceTicks();
            var ok = Decode(chain, out var error);
            if (ok)
            {
                var mode = Discard == DiscardMode.Auto
                    ? (BalloonTransportInfo.FromFeatures(NegotiatedFeatures) == BalloonTransport.Pfn ? DiscardMode.PerPage : DiscardMode.Runs)
                    : Discard;
                ok = inflate ? engine.Inflate(runs, mode, ref local, out error) : engine.Deflate(runs, mode, Deflate, ref local, out error);
            }
            if (!ok) Count(error);
            lock (regLock) ticks.Add(local);
            q.Push(chain, 0);
        }
        return served;
    }

    /// <summary>Copies the chain's readable bytes (so the guest cannot change them under the check) and parses them in the negotiated format.</summary>
    bool Decode(VirtqChain chain, out BalloonError error)
    {
        runs.Clear();
        if (chain.WritableBytes > 0)
        {
            error = new(BalloonErrorKind.WrongDirection, $"inflate/deflate request (head {chain.Head}) has {chain.WritableBytes} device-writable bytes; its buffers must be device-readable");
            return false;
        }
        var transport = BalloonTransportInfo.FromFeatures(NegotiatedFeatures);
        long max = transport switch
        {
            BalloonTransport.Pfn => VirtioBalloon.PfnsPerRequest * 4,
            BalloonTransport.Bitmap => PageBitmapFormat.ResponseHeaderSize + PageBitmapFormat.MaxDataSize,
            _ => PageRangeFormat.MaxEntries * PageRangeFormat.EntrySize,
        };
        if (chain.ReadableBytes > max)
        {
            error = new(BalloonErrorKind.TooLarge, $"{transport.Name()} request (head {chain.Head}) of {chain.ReadableBytes} bytes; at most {max} are allowed");
            return false;
        }
        var bytes = scratch.AsSpan(0, chain.ReadReadable(0, scratch.AsSpan(0, (int)chain.ReadableBytes)));
        return transport switch
        {
            BalloonTransport.Pfn => PfnArrayFormat.TryDecode(bytes, runs, out error),
            BalloonTransport.Bitmap => PageBitmapFormat.TryDecode(bytes, runs, out error),
            _ => PageRangeFormat.TryDecode(bytes, runs, out error),
        };
    }

    bool ServeReporting(SplitQueueDevice q)
    {
        bool served = false;
        while (TryPopResilient(q, out var chain))
        {
            served = true;
            Interlocked.Increment(ref requests);
            reported.Clear();
            BalloonError error = default;
            bool ok = chain.ReadableBytes == 0;
            if (!ok) error = new(BalloonErrorKind.WrongDirection, $"reporting request (head {chain.Head}) has {chain.ReadableBytes} device-readable bytes; reported pages are device-writable buffers");
            else foreach (var s in chain.Writable) reported.Add((s.Address, s.Length));
            var local = new DeviceTicks();
            if (ok) ok = engine.Report(reported, ref local, out error);
            if (ok) Interlocked.Add(ref reportedBytes, local.DiscardedBytes);
            else Count(error);
            lock (regLock) ticks.Add(local);
            q.Push(chain, 0);
        }
        return served;
    }

    bool ServeStats(SplitQueueDevice q)
    {
        bool served = false;
        // A buffer the guest added: parse it and keep it until the next stats request (QEMU's stats_vq_elem).
        while (TryPopResilient(q, out var chain))
        {
            if (statsChain is not null) q.Push(statsChain, 0); // a second buffer: give the older one back
            statsChain = chain;
            var values = new ulong?[VirtioBalloon.StatTags];
            int n = (int)Math.Min(chain.ReadableBytes, scratch.Length);
            if (chain.WritableBytes > 0)
                Count(new(BalloonErrorKind.WrongDirection, $"stats buffer (head {chain.Head}) has {chain.WritableBytes} device-writable bytes"));
            else if (chain.ReadableBytes > scratch.Length)
                Count(new(BalloonErrorKind.TooLarge, $"stats buffer of {chain.ReadableBytes} bytes"));
            else if (StatsFormat.TryDecode(scratch.AsSpan(0, chain.ReadReadable(0, scratch.AsSpan(0, n))), values, out var unknown, out var error))
            {
                lock (regLock)
                {
                    Array.Copy(values, stats, values.Length);
                    statsAt = DateTime.UtcNow;
                }
                Interlocked.Increment(ref statsUpdates);
                Interlocked.Add(ref statsUnknownTags, unknown);
            }
            else Count(error);
        }
        if (statsWanted && statsChain is not null)
        {
            statsWanted = false;
            q.Push(statsChain, 0);
            statsChain = null;
            served = true;
        }
        return served;
    }

    void Count(BalloonError error)
    {
        Interlocked.Increment(ref refused[(int)error.Kind]);
        LastError = error;
    }

    public void Dispose()
    {
        stop.Cancel();
        if (thread.IsAlive && Thread.CurrentThread != thread) thread.Join(TimeSpan.FromSeconds(10));
        doorbell.Dispose();
        Irq.Dispose();
        stop.Dispose();
    }
}
