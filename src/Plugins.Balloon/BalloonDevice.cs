using System.Diagnostics;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Plugins.Balloon.Guest;
using VirtLab.Plugins.Balloon.Host;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Virtio;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Balloon;

/// <summary>How a balloon device and its guest driver are set up (<c>Balloon.Device(...)</c>).</summary>
public sealed record BalloonOptions
{
    /// <summary>The transport the guest driver negotiates (the device offers all three). Null: PFN arrays when u32 PFNs
    /// reach all guest RAM (below 16 TiB), else the page bitmap.</summary>
    public BalloonTransport? Transport { get; init; }
    public DiscardMode Discard { get; init; } = DiscardMode.Auto;
    public DeflateHint Deflate { get; init; } = DeflateHint.WillNeed;
    public AllocationMode Allocation { get; init; } = AllocationMode.Auto;
    /// <summary>On THP backings, discard a 2 MiB page only when all of it is in the balloon (as hugetlb must).</summary>
    public bool WholeThpPages { get; init; } = true;
    /// <summary>Guest memory a workload holds (never ballooned); null = 1/16 of guest RAM.</summary>
    public Size? GuestHeld { get; init; }
    public bool DeflateOnOom { get; init; } = true;
    public bool StatsQueue { get; init; } = true;
    public bool Reporting { get; init; } = true;
    /// <summary>The device asks for stats this often (QEMU's guest-stats-polling-interval); null = only on <see cref="BalloonDevice.RequestStats"/>.</summary>
    public TimeSpan? StatsInterval { get; init; }
    /// <summary>The guest reports free pages this often (Linux: 2 s after they pile up); null = only on <see cref="BalloonDevice.ReportFreePages"/>.</summary>
    public TimeSpan? ReportingInterval { get; init; }
}

/// <summary>
/// A virtio-balloon device attached to a VM, with its guest driver: <c>var b = vm.Attach(Balloon.Device());</c>,
/// <c>b.Inflate(768.MiB())</c>, <c>b.Deflate(256.MiB())</c>, <c>b.Target = 512.MiB()</c>. The device serves its queues
/// on one thread, the guest driver runs on two others (interrupt handler, worker); they meet only at the virtqueues in
/// guest memory, the transport registers and the notifiers. Memory is the VM's real guest memory on either backend.
/// </summary>
public sealed class BalloonDevice : VmDevice, Sdk.IDisplayable
{
    readonly BalloonOptions options;
    readonly ManualResetEventSlim settled = new(false);
    readonly Lock opLock = new();
    VirtioBalloonModel? model;
    BalloonDriver? driver;
    GuestPageAllocator? allocator;
    List<long> held = [];
    long settledGeneration;

    public BalloonDevice(BalloonOptions? options = null) : base("virtio-balloon") => this.options = options ?? new BalloonOptions();

    public BalloonOptions Options => options;

    protected override void OnAttach(Vm vm)
    {
        var ram = vm.Slots.Where(s => !s.IsSystem).ToArray();
        if (ram.Length == 0) throw new InvalidOperationException("the VM has no guest RAM besides system slot 0; the balloon needs at least one memslot it may take pages from");
        allocator = new GuestPageAllocator(ram.Select(s => new PageRun((long)s.BaseGfn, s.Pages)));
        // The guest workload: held pages, each stamped with its PFN so a test can tell they were never discarded.
        var heldPages = (options.GuestHeld ?? new Size(allocator.TotalPages * VirtioBalloon.PageSize / 16)).Bytes / VirtioBalloon.PageSize;
        if (heldPages > allocator.TotalPages / 2)
            throw new ArgumentOutOfRangeException(nameof(options), $"the guest workload would hold {new Size(heldPages * 4096)} of {new Size(allocator.TotalPages * 4096)} guest RAM; at most half");
        var buf = new long[4096];
        while (held.Count < heldPages)
        {
            int n = allocator.AllocatePages(buf, (int)Math.Min(buf.Length, heldPages - held.Count));
            held.AddRange(buf.AsSpan(0, n));
        }
        foreach (var p in held) vm.Memory.Write((ulong)p << 12, (ulong)p);

        ulong offered = VirtioBalloon.Bit(VirtioBalloon.F_MUST_TELL_HOST) | VirtioBalloon.Bit(VirtioBalloon.F_PAGE_BITMAP) |
                        VirtioBalloon.Bit(VirtioBalloon.F_PAGE_RANGES) | (ulong)VirtioFeatures.Version1 | (ulong)VirtioFeatures.EventIdx;
        if (options.StatsQueue) offered |= VirtioBalloon.Bit(VirtioBalloon.F_STATS_VQ);
        if (options.DeflateOnOom) offered |= VirtioBalloon.Bit(VirtioBalloon.F_DEFLATE_ON_OOM);
        if (options.Reporting) offered |= VirtioBalloon.Bit(VirtioBalloon.F_REPORTING);
        model = new VirtioBalloonModel(vm, offered, options.Discard, options.Deflate, options.WholeThpPages);
        model.ActualChanged += _ => settled.Set();
        try
        {
            var reachable = ram.Max(s => s.EndGpa) <= (PfnArrayFormat.MaxPfn + 1) << 12;
            StartDriver(vm, options.Transport ?? (reachable ? BalloonTransport.Pfn : BalloonTransport.Bitmap), options.Allocation);
            if (options.StatsInterval is { } si) model.RequestStats(si);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    void StartDriver(Vm vm, BalloonTransport transport, AllocationMode allocation)
    {
        if (transport == BalloonTransport.Pfn && vm.Slots.Where(s => !s.IsSystem).Max(s => s.EndGpa) > (PfnArrayFormat.MaxPfn + 1) << 12)
            throw new ArgumentException(
                $"PFN arrays carry u32 PFNs, which reach 16 TiB of guest-physical space, but this VM's RAM ends at gpa 0x{vm.Slots.Max(s => s.EndGpa):x} " +
                "(the test slot sits at the top of the space by default). Create the VM with testSlotGpa: 4.GiB() (or any gpa below 16 TiB), " +
                "or use transport: BalloonTransport.Bitmap or Ranges, whose PFNs are 52 bits");
        var d = new BalloonDriver(vm, model!, allocator!, transport, allocation);
        d.Settled += () => { Interlocked.Increment(ref settledGeneration); settled.Set(); };
        d.Probe();
        if (options.ReportingInterval is { } ri && options.Reporting) d.ReportEvery(ri);
        driver = d;
    }

    Vm V => AttachedVm;
    VirtioBalloonModel M => model ?? throw new InvalidOperationException("the balloon is not attached; use vm.Attach(Balloon.Device())");
    BalloonDriver D => driver ?? throw new InvalidOperationException("the balloon's guest driver is not running");

    /// <summary>The negotiated transport. Setting another one re-probes the guest driver (device reset, new negotiation);
    /// the balloon must be empty then.</summary>
    public BalloonTransport Transport
    {
        get => D.Transport;
        set
        {
            lock (opLock)
            {
                if (value == D.Transport) return;
                if (D.NumPages != 0)
                    throw new InvalidOperationException($"the balloon holds {new Size(D.NumPages * 4096)}; deflate it fully (b.Target = 0) before switching the transport from {D.Transport.Name()} to {value.Name()}");
                var allocation = options.Allocation;
                var old = D;
                driver = null;
                old.Dispose();
                old.ReleaseKernelMemory();
                StartDriver(V, value, allocation);
            }
        }
    }

    /// <summary>How the guest allocates balloon pages (stage a).</summary>
    public AllocationMode Allocation { get => D.Allocation; set => D.Allocation = value == AllocationMode.Auto ? (D.Transport == BalloonTransport.Pfn ? AllocationMode.SinglePages : AllocationMode.Chunks) : value; }

    /// <summary>How the device discards (Auto: per page for PFN arrays, runs otherwise).</summary>
    public DiscardMode Discard { get => M.Discard; set => M.Discard = value; }

    public DeflateHint DeflateHint { get => M.Deflate; set => M.Deflate = value; }

    public string Features => VirtioBalloon.FeatureNames(M.NegotiatedFeatures);

    /// <summary>What the host asks the balloon to hold (config num_pages × 4 KiB). Setting it notifies the guest, which converges on its own.</summary>
    public Size Target
    {
        get => new(M.NumPages * VirtioBalloon.PageSize);
        set => SetTarget(value);
    }

    /// <summary>What the balloon holds (config actual × 4 KiB, as the guest reported it).</summary>
    public Size Actual => new(M.Actual * VirtioBalloon.PageSize);

    /// <summary>The VM's resident guest memory, measured now with mincore.</summary>
    public Size Resident => V.Memory.ResidentBytes;

    public Size GuestRam => new((allocator?.TotalPages ?? 0) * VirtioBalloon.PageSize);
    public Size GuestFree => new((allocator?.FreePages ?? 0) * VirtioBalloon.PageSize);
    public Size GuestHeld => new(held.Count * VirtioBalloon.PageSize);

    public BalloonOperation? LastOperation { get; private set; }

    void SetTarget(Size size)
    {
        if (size.Bytes < 0 || size.Bytes % VirtioBalloon.PageSize != 0)
            throw new ArgumentException($"a balloon target is a whole number of 4 KiB pages; got {size} ({size.Bytes} bytes)", nameof(size));
        var pages = size.Bytes / VirtioBalloon.PageSize;
        if (pages > allocator!.TotalPages)
            throw new ArgumentOutOfRangeException(nameof(size), $"target {size} is more than the guest's {GuestRam} of RAM");
        settled.Reset();
        M.SetNumPages((uint)pages);
    }

    /// <summary>Grows the balloon by <paramref name="size"/> and waits until the guest got there (or could not); returns the stage table.</summary>
    public BalloonOperation Inflate(Size size, BalloonTransport? transport = null, TimeSpan? timeout = null, CancellationToken cancellation = default)
    {
        if (transport is { } t) Transport = t;
        return Operate("inflate", size, +1, timeout, cancellation);
    }

    /// <summary>Shrinks the balloon by <paramref name="size"/> (the guest takes the pages back) and waits; returns the stage table.</summary>
    public BalloonOperation Deflate(Size size, TimeSpan? timeout = null, CancellationToken cancellation = default)
        => Operate("deflate", size, -1, timeout, cancellation);

    BalloonOperation Operate(string kind, Size size, int sign, TimeSpan? timeout, CancellationToken ct)
    {
        if (size.Bytes <= 0 || size.Bytes % VirtioBalloon.PageSize != 0)
            throw new ArgumentException($"{kind} takes a positive whole number of 4 KiB pages; got {size}", nameof(size));
        lock (opLock)
        {
            var current = M.NumPages * VirtioBalloon.PageSize;
            var target = current + sign * size.Bytes;
            if (target < 0) throw new ArgumentOutOfRangeException(nameof(size), $"cannot deflate {size}: the balloon's target is {new Size(current)}");
            var before = D.Counters;
            var devBefore = M.Ticks;
            var refusedBefore = RefusedTotal;
            var residentBefore = Resident;
            var gen = Interlocked.Read(ref settledGeneration);
            var sw = Stopwatch.StartNew();
            SetTarget(new Size(target));
            var deadline = timeout is { } to ? Stopwatch.GetTimestamp() + (long)(to.TotalSeconds * Stopwatch.Frequency) : long.MaxValue;
            string? note = null;
            while (true)
            {
                if (M.Actual * VirtioBalloon.PageSize == target && D.NumPages * VirtioBalloon.PageSize == target) break;
                if (D.Stuck is { } why && Interlocked.Read(ref settledGeneration) > gen) { note = why; break; }
                if (Stopwatch.GetTimestamp() > deadline) { note = $"timed out after {timeout}"; break; }
                settled.Wait(TimeSpan.FromMilliseconds(200), ct);
                settled.Reset();
            }
            var wall = sw.Elapsed;
            var after = D.Counters;
            var devAfter = M.Ticks;
            var residentAfter = Resident;
            double f = Stopwatch.Frequency;
            long c = devAfter.Translate - devBefore.Translate, d = devAfter.Madvise - devBefore.Madvise;
            long b = Math.Max(0, after.Send - before.Send - c - d);
            var op = new BalloonOperation
            {
                Kind = kind, Transport = D.Transport, Backing = V.Options.Backing.Name(),
                Discard = M.Discard == DiscardMode.Auto ? (D.Transport == BalloonTransport.Pfn ? DiscardMode.PerPage : DiscardMode.Runs) : M.Discard,
                Allocation = D.Allocation, Requested = size,
                Pages = sign > 0 ? after.Inflated - before.Inflated : after.Deflated - before.Deflated,
                Allocate = TimeSpan.FromSeconds((after.Alloc - before.Alloc) / f), Send = TimeSpan.FromSeconds(b / f),
                Translate = TimeSpan.FromSeconds(c / f), Madvise = TimeSpan.FromSeconds(d / f), Wall = wall,
                ResidentBefore = residentBefore, ResidentAfter = residentAfter, Requests = after.Requests - before.Requests,
                DiscardCalls = devAfter.DiscardCalls - devBefore.DiscardCalls + devAfter.HintCalls - devBefore.HintCalls,
                Refused = RefusedTotal - refusedBefore, Note = note,
            };
            LastOperation = op;
            return op;
        }
    }

    long RefusedTotal => Enum.GetValues<BalloonErrorKind>().Sum(k => M.Refused(k));

    /// <summary>Refused requests by kind, virtqueue errors by queue and kind, discard failures.</summary>
    public IReadOnlyDictionary<string, long> Errors => M.ErrorCounters;

    /// <summary>The last request the device refused, with the reason.</summary>
    public string? LastError => M.LastError?.ToString();

    /// <summary>The PFNs in the balloon as the device sees them (ascending).</summary>
    public IReadOnlyList<long> DevicePages => M.Engine.BalloonedPfns();

    /// <summary>The PFNs in the balloon as the guest driver holds them (ascending).</summary>
    public IReadOnlyList<long> DriverPages => D.Pages();

    /// <summary>Huge host pages partly in the balloon, waiting for their last 4 KiB parts before they are discarded.</summary>
    public long PartialHugePages => M.Engine.PartialHostPages();

    /// <summary>Guest workload pages whose stamp changed (0 unless something discarded memory it should not have).</summary>
    public long VerifyGuestHeld()
    {
        long bad = 0;
        foreach (var p in held) if (V.Memory.Read<ulong>((ulong)p << 12) != (ulong)p) bad++;
        return bad;
    }

    /// <summary>The guest workload allocates <paramref name="size"/> more; with DEFLATE_ON_OOM the balloon gives pages back when
    /// the guest runs out. Returns what it got.</summary>
    public Size GuestAllocate(Size size, CancellationToken cancellation = default)
    {
        var got = D.WorkloadAllocate(size.Bytes / VirtioBalloon.PageSize, cancellation);
        foreach (var p in got) V.Memory.Write((ulong)p << 12, (ulong)p);
        held.AddRange(got);
        return new Size(got.Count * VirtioBalloon.PageSize);
    }

    public long OomDeflations => D.OomDeflates;

    /// <summary>Free page reporting now: every free block of ≥ 2 MiB not reported yet goes to the host, which discards it.</summary>
    public Size ReportFreePages(CancellationToken cancellation = default) => new(D.RequestReport(cancellation) * VirtioBalloon.PageSize);

    /// <summary>Bytes the device discarded for free page reporting.</summary>
    public Size Reported => new(M.ReportedBytes);

    /// <summary>Asks the guest for stats now and waits briefly for them; with <paramref name="every"/>, keeps polling at that interval.</summary>
    public BalloonStatsView RequestStats(TimeSpan? every = null, TimeSpan? wait = null)
    {
        if (!M.StatsSupported) throw new InvalidOperationException("the stats queue was not negotiated (feature STATS_VQ, bit 1)");
        var n = M.StatsUpdates;
        M.RequestStats(every);
        var deadline = Stopwatch.GetTimestamp() + (long)((wait ?? TimeSpan.FromSeconds(5)).TotalSeconds * Stopwatch.Frequency);
        while (M.StatsUpdates == n && Stopwatch.GetTimestamp() < deadline) Thread.Sleep(1);
        return Stats;
    }

    public BalloonStatsView Stats
    {
        get
        {
            var (v, at) = M.Stats;
            return new BalloonStatsView(v, at, M.StatsUpdates, M.StatsUnknownTags);
        }
    }

    public override string Summary => model is null ? "not attached" :
        $"{D.Transport.Name()}: target {Target}, actual {Actual}, {M.Requests:N0} requests, {RefusedTotal} refused";

    public IRenderable ToRenderable()
    {
        if (model is null || driver is null) return new Text($"{Name}: not attached");
        var t = new Table { Title = new TableTitle(Markup.Escape($"virtio-balloon ({D.Transport.Name()})")) };
        t.AddColumn("").AddColumn("");
        t.AddRow("target / actual", Markup.Escape($"{Target} / {Actual}"));
        t.AddRow("resident guest memory", Markup.Escape(Resident.ToString()));
        t.AddRow("guest RAM / free / held", Markup.Escape($"{GuestRam} / {GuestFree} / {GuestHeld}"));
        t.AddRow("features", Markup.Escape(Features));
        t.AddRow("discard / deflate / alloc", Markup.Escape($"{Discard} / {DeflateHint} / {Allocation}"));
        t.AddRow("partial huge pages", PartialHugePages.ToString());
        var errs = Errors;
        t.AddRow("errors", errs.Count == 0 ? "none" : Markup.Escape(string.Join(", ", errs.Select(e => $"{e.Key} {e.Value}"))));
        if (LastError is { } le) t.AddRow("last refused", Markup.Escape(le));
        if (D.Stuck is { } s) t.AddRow("driver", Markup.Escape(s));
        if (M.Failure is { } f) t.AddRow("device failure", Markup.Escape(f.Message));
        return LastOperation is { } op ? new Rows(t, op.ToRenderable()) : t;
    }

    protected override void Dispose(bool disposing)
    {
        driver?.Dispose();
        model?.Dispose();
        settled.Dispose();
    }
}

/// <summary>The guest's last stats (tags 0–9), as QEMU's guest-stats property shows them.</summary>
public sealed record BalloonStatsView(IReadOnlyList<ulong?> Values, DateTime? LastUpdate, long Updates, long UnknownTags) : Sdk.IDisplayable
{
    public ulong? this[int tag] => tag >= 0 && tag < Values.Count ? Values[tag] : null;

    public Size? FreeMemory => Values[VirtioBalloon.S_MEMFREE] is { } v ? new Size((long)v) : null;
    public Size? TotalMemory => Values[VirtioBalloon.S_MEMTOT] is { } v ? new Size((long)v) : null;

    public IRenderable ToRenderable()
    {
        var t = new Table { Title = new TableTitle("guest stats") };
        t.AddColumn("tag").AddColumn("name").AddColumn(new TableColumn("value").RightAligned());
        for (int i = 0; i < Values.Count; i++) t.AddRow(i.ToString(), VirtioBalloon.StatName(i), Values[i]?.ToString("N0") ?? "—");
        t.Caption = new TableTitle(Markup.Escape($"{Updates} updates, last {LastUpdate?.ToString("HH:mm:ss.fff") ?? "never"}, {UnknownTags} unknown tags skipped"));
        return t;
    }
}
