using System.Collections.Concurrent;
using System.Diagnostics;
using System.Numerics;
using VirtLab.Plugins.Balloon.Host;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Virtio;

namespace VirtLab.Plugins.Balloon.Guest;


/// <summary>
/// The guest's virtio-balloon driver (drivers/virtio/virtio_balloon.c as the seed patched it): probes the device,
/// puts its virtqueues in guest memory, and on a config change fills or leaks the balloon towards num_pages — allocate
/// pages from the guest's buddy allocator, encode them in the negotiated transport, add to the inflate or deflate
/// queue, kick, wait for the device, account <c>actual</c>. Also: stats on request, deflate on OOM, free page reporting.
/// Two guest threads, as in Linux: an interrupt handler (reads the ISR, wakes waiters, queues work) and a worker (the
/// balloon's work items). They reach the device only through the transport registers, the rings and the notifiers.
/// </summary>
internal sealed class BalloonDriver : IDisposable
{
    const ulong Supported = (1UL << VirtioBalloon.F_MUST_TELL_HOST) | (1UL << VirtioBalloon.F_STATS_VQ) | (1UL << VirtioBalloon.F_DEFLATE_ON_OOM) |
                            (1UL << VirtioBalloon.F_REPORTING) | (ulong)VirtioFeatures.Version1 | (ulong)VirtioFeatures.EventIdx;
    /// <summary>Pages one bitmap/range fill takes at most: the seed's 32 bitmaps of 32 KiB cover 8 Mi pages (32 GiB).</summary>
    const int MaxBatchPages = 32 * PageBitmapFormat.DriverDataSize * 8;

    readonly Vm vm;
    readonly VirtioBalloonModel dev;
    readonly GuestPageAllocator alloc;
    readonly BlockingCollection<Work> work = new();
    readonly ManualResetEventSlim acked = new(false);
    readonly CancellationTokenSource stop = new();
    readonly Lock balloonLock = new();
    readonly List<PageRun> balloon = []; // the balloon's pages, most recent last (Linux's vb_dev_info->pages, LIFO)
    Thread? irqThread, worker;
    SplitQueueDriver? inflateQ, deflateQ, statsQ, reportQ;
    ulong bufferGpa; // 64 KiB of request buffers in guest memory
    long numPages;   // pages in the balloon (the driver's count; written to config 'actual')
    long allocTicks, sendTicks, requestsSent, pagesInflated, pagesDeflated, oomDeflates, reportRequests, reportedPages;
    long minorFaults;
    ushort requestId;
    readonly long[] pfnScratch = new long[VirtioBalloon.PfnsPerRequest];

    abstract record Work;
    sealed record ConfigChanged : Work;
    sealed record Interrupt : Work;
    sealed record Report(TaskCompletionSource<long> Done) : Work;
    sealed record OomDeflate(TaskCompletionSource<long> Done) : Work;

    public BalloonDriver(Vm vm, VirtioBalloonModel dev, GuestPageAllocator alloc, BalloonTransport transport, AllocationMode allocation)
    {
        this.vm = vm;
        this.dev = dev;
        this.alloc = alloc;
        Transport = transport;
        Allocation = allocation == AllocationMode.Auto ? (transport == BalloonTransport.Pfn ? AllocationMode.SinglePages : AllocationMode.Chunks) : allocation;
    }

    public BalloonTransport Transport { get; }
    public AllocationMode Allocation { get; set; }
    public ulong Features { get; private set; }
    public long NumPages => Interlocked.Read(ref numPages);
    public bool DeflateOnOom => VirtioBalloon.Has(Features, VirtioBalloon.F_DEFLATE_ON_OOM);
    public GuestPageAllocator Allocator => alloc;

    /// <summary>Set when a fill could not allocate a single page: the guest is out of memory for the balloon.</summary>
    public string? Stuck { get; private set; }

    /// <summary>Raised on the worker when an update towards num_pages ends (converged or stuck).</summary>
    public event Action? Settled;

    public (long Alloc, long Send, long Requests, long Inflated, long Deflated) Counters
        => (Interlocked.Read(ref allocTicks), Interlocked.Read(ref sendTicks), Interlocked.Read(ref requestsSent),
            Interlocked.Read(ref pagesInflated), Interlocked.Read(ref pagesDeflated));

    public long OomDeflates => Interlocked.Read(ref oomDeflates);
    public long ReportRequests => Interlocked.Read(ref reportRequests);
    public long ReportedPages => Interlocked.Read(ref reportedPages);

    // ---- probe -------------------------------------------------------------------------------------------------

    /// <summary>virtballoon_probe: negotiate, set up the queues in guest memory, DRIVER_OK, first stats buffer, start the threads.</summary>
    public void Probe()
    {
        dev.WriteStatus(0);
        dev.WriteStatus((byte)VirtioDeviceStatus.Acknowledge);
        dev.WriteStatus((byte)(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver));
        var offered = dev.DeviceFeatures;
        var transportBit = Transport.Feature();
        if (transportBit != 0 && (offered & transportBit) == 0)
            throw new InvalidOperationException($"the device does not offer {Transport.Name()} ({VirtioBalloon.FeatureNames(transportBit)}); it offers {VirtioBalloon.FeatureNames(offered)}");
        Features = offered & (Supported | transportBit);
        dev.WriteDriverFeatures(Features);
        var st = VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver | VirtioDeviceStatus.FeaturesOk;
        dev.WriteStatus((byte)st);
        if ((dev.ReadStatus() & (byte)VirtioDeviceStatus.FeaturesOk) == 0)
        {
            dev.WriteStatus((byte)(st | VirtioDeviceStatus.Failed));
            throw new InvalidOperationException($"the device refused features {VirtioBalloon.FeatureNames(Features)} (FEATURES_OK stayed clear)");
        }

        // init_vqs: one page per ring (a 128-entry split ring is 3.3 KiB), 64 KiB of request buffers.
        var (inf, def, stats, _, rep) = VirtioBalloon.QueueIndexes(Features);
        var vf = (VirtioFeatures)Features;
        SplitQueueDriver Queue(int index, string name)
        {
            var page = KernelAlloc(0, name);
            var ring = SplitRing.Contiguous((ulong)page << 12, VirtioBalloonModel.QueueSize);
            dev.SetQueue(index, ring);
            return new SplitQueueDriver(vm.PhysicalSpace, ring, vf, dev.Doorbell, name: name);
        }
        inflateQ = Queue(inf, "inflateq");
        deflateQ = Queue(def, "deflateq");
        statsQ = stats >= 0 ? Queue(stats, "statsq") : null;
        reportQ = rep >= 0 ? Queue(rep, "reporting_vq") : null;
        bufferGpa = (ulong)KernelAlloc(4, "request buffers") << 12;
        dev.WriteStatus((byte)(st | VirtioDeviceStatus.DriverOk));

        irqThread = new Thread(InterruptHandler) { IsBackground = true, Name = "balloon guest irq" };
        worker = new Thread(Worker) { IsBackground = true, Name = "balloon guest worker" };
        irqThread.Start();
        worker.Start();
        if (statsQ is not null) work.Add(new Interrupt()); // the worker fills and adds the first stats buffer
        work.Add(new ConfigChanged());
    }

    readonly List<(long Pfn, int Order)> kernelMemory = [];

    long KernelAlloc(int order, string what)
    {
        var p = alloc.Allocate(order);
        if (p < 0) throw new InvalidOperationException($"the guest has no free block of {4 << order} KiB for the balloon driver's {what}");
        kernelMemory.Add((p, order));
        return p;
    }

    /// <summary>After <see cref="Dispose"/>: gives the rings and buffers back to the guest (virtballoon_remove).</summary>
    public void ReleaseKernelMemory()
    {
        foreach (var (p, o) in kernelMemory) alloc.Free(p, o);
        kernelMemory.Clear();
    }

    // Buffer layout inside the 64 KiB area.
    ulong PfnBuffer => bufferGpa;                  // 1 KiB: 256 u32
    ulong StatsBuffer => bufferGpa + 2048;         // 10 × 10 bytes
    ulong HeaderBuffer => bufferGpa + 4096;        // 8-byte response header
    ulong DataBuffer => bufferGpa + 32768;         // 32 KiB: bitmap headers or ranges

    // ---- threads -----------------------------------------------------------------------------------------------

    void InterruptHandler()
    {
        var ct = stop.Token;
        try
        {
            while (!ct.IsCancellationRequested)
            {
                dev.Irq.Wait(ct);
                dev.Irq.Read();
                int isr = dev.ReadIsr();
                if ((isr & 1) != 0)
                {
                    acked.Set();                                         // balloon_ack: wake tell_host
                    if (statsQ is not null) work.Add(new Interrupt());   // stats_request: maybe the stats buffer came back
                }
                if ((isr & 2) != 0) work.Add(new ConfigChanged());       // virtballoon_changed
            }
        }
        catch (OperationCanceledException) { }
        catch (ObjectDisposedException) { }
        catch (InvalidOperationException) when (work.IsAddingCompleted) { }
    }

    void Worker()
    {
        var ct = stop.Token;
        try
        {
            foreach (var w in work.GetConsumingEnumerable(ct))
            {
                try
                {
                    switch (w)
                    {
                        case ConfigChanged: UpdateBalloonSize(ct); break;
                        case Interrupt: StatsRequest(); break;
                        case Report r: Complete(r.Done, () => ReportFreePages(ct)); break;
                        case OomDeflate o: Complete(o.Done, () => OomNotify(ct)); break;
                    }
                }
                catch (Exception e) when (e is not OperationCanceledException and not ObjectDisposedException)
                {
                    // A guest driver that hits an error stops that work item and says why; the worker goes on.
                    Stuck = $"the balloon driver failed: {e.Message}";
                    Settled?.Invoke();
                }
            }
        }
        catch (OperationCanceledException) { }
        catch (ObjectDisposedException) { }
    }

    static void Complete(TaskCompletionSource<long> done, Func<long> body)
    {
        try { done.TrySetResult(body()); }
        catch (Exception e) { done.TrySetException(e); }
    }

    // ---- fill / leak -------------------------------------------------------------------------------------------

    void UpdateBalloonSize(CancellationToken ct)
    {
        if ((dev.ReadStatus() & (byte)VirtioDeviceStatus.NeedsReset) != 0) { Stuck = "the device needs a reset (a virtqueue broke)"; Settled?.Invoke(); return; }
        Stuck = null;
        while (!ct.IsCancellationRequested)
        {
            long target = dev.ReadConfig(VirtioBalloon.ConfigNumPages);
            long diff = target - NumPages;
            if (diff == 0) break;
            long done = diff > 0 ? Fill(diff, ct) : -Leak(-diff, ct);
            dev.WriteConfig(VirtioBalloon.ConfigActual, (uint)NumPages);
            if (done == 0)
            {
                Stuck = $"the guest could not allocate pages for the balloon: {NumPages} of {target} inflated, {alloc.FreePages} pages free";
                break;
            }
        }
        Settled?.Invoke();
    }

    /// <summary>fill_balloon: takes up to <paramref name="num"/> pages and tells the host. Returns the pages added.</summary>
    long Fill(long num, CancellationToken ct)
    {
        lock (balloonLock)
        {
            num = Transport == BalloonTransport.Pfn ? Math.Min(num, VirtioBalloon.PfnsPerRequest) : Math.Min(num, MaxBatchPages);
            long t0 = Stopwatch.GetTimestamp();
            var taken = new List<PageRun>();
            long got = Take(num, taken);
            long t1 = Stopwatch.GetTimestamp();
            Interlocked.Add(ref allocTicks, t1 - t0);
            if (got == 0) return 0;
            TellHost(inflateQ!, taken, ct);
            Interlocked.Add(ref sendTicks, Stopwatch.GetTimestamp() - t1);
            foreach (var r in taken) Push(r);
            Interlocked.Add(ref numPages, got);
            Interlocked.Add(ref pagesInflated, got);
            return got;
        }
    }

    /// <summary>leak_balloon: gives up to <paramref name="num"/> pages back — tell the host first (MUST_TELL_HOST), then free them.</summary>
    long Leak(long num, CancellationToken ct)
    {
        lock (balloonLock)
        {
            num = Transport == BalloonTransport.Pfn ? Math.Min(num, VirtioBalloon.PfnsPerRequest) : Math.Min(num, MaxBatchPages);
            long t0 = Stopwatch.GetTimestamp();
            var taken = new List<PageRun>();
            long got = 0;
            while (got < num && balloon.Count > 0)
            {
                var last = balloon[^1];
                long n = Math.Min(last.Count, num - got);
                taken.Add(new PageRun(last.End - n, n));
                if (n == last.Count) balloon.RemoveAt(balloon.Count - 1);
                else balloon[^1] = new PageRun(last.First, last.Count - n);
                got += n;
            }
            long t1 = Stopwatch.GetTimestamp();
            Interlocked.Add(ref allocTicks, t1 - t0);
            if (got == 0) return 0;
            TellHost(deflateQ!, taken, ct);
            long t2 = Stopwatch.GetTimestamp();
            Interlocked.Add(ref sendTicks, t2 - t1);
            foreach (var r in taken) FreeRun(r);
            Interlocked.Add(ref allocTicks, Stopwatch.GetTimestamp() - t2);
            Interlocked.Add(ref numPages, -got);
            Interlocked.Add(ref pagesDeflated, got);
            return got;
        }
    }

    /// <summary>Stage a: <paramref name="num"/> pages from the buddy allocator, one at a time or in chunks; returns how many.</summary>
    long Take(long num, List<PageRun> into)
    {
        long got = 0;
        if (Allocation == AllocationMode.SinglePages)
        {
            while (got < num)
            {
                int want = (int)Math.Min(num - got, pfnScratch.Length);
                int n = alloc.AllocatePages(pfnScratch, want);
                for (int i = 0; i < n; i++) AppendPage(into, pfnScratch[i]);
                got += n;
                if (n < want) break;
            }
            return got;
        }
        int order = GuestPageAllocator.MaxOrder;
        while (got < num)
        {
            order = Math.Min(order, 63 - BitOperations.LeadingZeroCount((ulong)(num - got)));
            long p = alloc.Allocate(order);
            if (p < 0)
            {
                if (order == 0) break;
                order--;
                continue;
            }
            AppendRun(into, new PageRun(p, 1L << order));
            got += 1L << order;
        }
        return got;
    }

    static void AppendPage(List<PageRun> runs, long pfn)
    {
        if (runs.Count > 0 && runs[^1].End == pfn) runs[^1] = new PageRun(runs[^1].First, runs[^1].Count + 1);
        else runs.Add(new PageRun(pfn, 1));
    }

    static void AppendRun(List<PageRun> runs, PageRun r)
    {
        if (runs.Count > 0 && runs[^1].End == r.First) runs[^1] = new PageRun(runs[^1].First, runs[^1].Count + r.Count);
        else runs.Add(r);
    }

    void Push(PageRun r) => AppendRun(balloon, r);

    void FreeRun(PageRun r)
    {
        // Back to the buddy allocator in the largest aligned blocks the run holds.
        for (long p = r.First; p < r.End;)
        {
            int order = 0;
            while (order < GuestPageAllocator.MaxOrder && (p & ((2L << order) - 1)) == 0 && p + (2L << order) <= r.End) order++;
            alloc.Free(p, order);
            p += 1L << order;
        }
    }

    /// <summary>The balloon's pages as the driver holds them, ascending.</summary>
    public List<long> Pages()
    {
        lock (balloonLock)
        {
            var l = new List<long>();
            foreach (var r in balloon) for (long p = r.First; p < r.End; p++) l.Add(p);
            l.Sort();
            return l;
        }
    }

    // ---- tell_host in the three transports ---------------------------------------------------------------------

    void TellHost(SplitQueueDriver q, List<PageRun> pages, CancellationToken ct)
    {
        switch (Transport)
        {
            case BalloonTransport.Pfn:
            {
                int n = 0;
                foreach (var r in pages) for (long p = r.First; p < r.End; p++) pfnScratch[n++] = p;
                int bytes = PfnArrayFormat.Encode(pfnScratch.AsSpan(0, n), vm.Memory.Span(PfnBuffer, n * 4));
                Send(q, [new VirtqBuffer(PfnBuffer, (uint)bytes)], [], ct);
                break;
            }
            case BalloonTransport.Bitmap:
            {
                // set_page_bitmap: one bitmap over [min, max] of the batch, then data buffers of bitmap headers.
                long min = long.MaxValue, max = 0;
                foreach (var r in pages) { min = Math.Min(min, r.First); max = Math.Max(max, r.End); }
                min &= ~63L;
                var bitmap = new DirtyBitmap(max - min);
                foreach (var r in pages) bitmap.SetRange(r.First - min, r.Count);
                int word = 0;
                while (word < bitmap.Words.Length)
                {
                    int n = PageBitmapFormat.Encode(bitmap, min, ref word, vm.Memory.Span(DataBuffer, PageBitmapFormat.DriverDataSize));
                    if (n == 0) break;
                    PageBitmapFormat.WriteResponseHeader(vm.Memory.Span(HeaderBuffer, PageBitmapFormat.ResponseHeaderSize), requestId++, n);
                    Send(q, [new VirtqBuffer(HeaderBuffer, PageBitmapFormat.ResponseHeaderSize), new VirtqBuffer(DataBuffer, (uint)n)], [], ct);
                }
                break;
            }
            case BalloonTransport.Ranges:
            {
                var sorted = pages.OrderBy(r => r.First).ToList();
                var merged = new List<PageRun>(sorted.Count);
                foreach (var r in sorted) AppendRun(merged, r);
                var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(merged);
                for (int i = 0; i < span.Length; i += PageRangeFormat.DriverEntries)
                {
                    var chunk = span.Slice(i, Math.Min(PageRangeFormat.DriverEntries, span.Length - i));
                    int bytes = PageRangeFormat.Encode(chunk, vm.Memory.Span(DataBuffer, chunk.Length * PageRangeFormat.EntrySize));
                    Send(q, [new VirtqBuffer(DataBuffer, (uint)bytes)], [], ct);
                }
                break;
            }
        }
    }

    /// <summary>virtqueue_add_outbuf + virtqueue_kick + wait_event(acked, virtqueue_get_buf).</summary>
    void Send(SplitQueueDriver q, VirtqBuffer[] readable, VirtqBuffer[] writable, CancellationToken ct)
    {
        if (!q.TryAdd(readable, writable, 0, out _))
            throw new InvalidOperationException($"{q.Name}: no free descriptors for a request (the device holds every buffer)");
        q.KickIfNeeded();
        Interlocked.Increment(ref requestsSent);
        var deadline = Stopwatch.GetTimestamp() + 30 * Stopwatch.Frequency;
        while (true)
        {
            acked.Reset();
            if (q.TryGetUsed(out _)) return;
            if (!acked.Wait(TimeSpan.FromSeconds(1), ct) && Stopwatch.GetTimestamp() > deadline)
                throw new TimeoutException($"{q.Name}: the device did not return the request within 30 s");
        }
    }

    // ---- stats, OOM, free page reporting -----------------------------------------------------------------------

    bool statsAdded;

    /// <summary>stats_handle_request: when the device gave the stats buffer back (or at probe), refresh it and add it again.</summary>
    void StatsRequest()
    {
        if (statsQ is null) return;
        bool returned = false;
        while (statsQ.TryGetUsed(out _)) returned = true;
        if (statsAdded && !returned) return;
        long free = alloc.FreePages * VirtioBalloon.PageSize, total = alloc.TotalPages * VirtioBalloon.PageSize;
        BalloonStat[] s =
        [
            new(VirtioBalloon.S_SWAP_IN, 0), new(VirtioBalloon.S_SWAP_OUT, 0), new(VirtioBalloon.S_MAJFLT, 0),
            new(VirtioBalloon.S_MINFLT, (ulong)Interlocked.Read(ref minorFaults)), new(VirtioBalloon.S_MEMFREE, (ulong)free),
            new(VirtioBalloon.S_MEMTOT, (ulong)total), new(VirtioBalloon.S_AVAIL, (ulong)free), new(VirtioBalloon.S_CACHES, 0),
            new(VirtioBalloon.S_HTLB_PGALLOC, 0), new(VirtioBalloon.S_HTLB_PGFAIL, 0),
        ];
        int bytes = StatsFormat.Encode(s, vm.Memory.Span(StatsBuffer, s.Length * VirtioBalloon.StatSize));
        statsQ.TryAdd([new VirtqBuffer(StatsBuffer, (uint)bytes)], [], 0, out _);
        statsQ.KickIfNeeded();
        statsAdded = true;
    }

    /// <summary>A guest workload allocation: order-0 pages; when the allocator runs dry and DEFLATE_ON_OOM was negotiated, the
    /// OOM notifier deflates <see cref="VirtioBalloon.OomPages"/> pages at a time (on the driver's worker) and the allocation retries.</summary>
    public List<long> WorkloadAllocate(long pages, CancellationToken ct = default)
    {
        var got = new List<long>();
        while (got.Count < pages)
        {
            var p = alloc.Allocate(0);
            if (p >= 0) { got.Add(p); Interlocked.Increment(ref minorFaults); continue; }
            if (!DeflateOnOom || NumPages == 0) break;
            var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
            work.Add(new OomDeflate(done), ct);
            if (done.Task.WaitAsync(ct).GetAwaiter().GetResult() == 0) break;
        }
        return got;
    }

    long OomNotify(CancellationToken ct)
    {
        long freed = 0;
        while (freed < VirtioBalloon.OomPages && NumPages > 0)
        {
            var n = Leak(VirtioBalloon.OomPages - freed, ct);
            if (n == 0) break;
            freed += n;
        }
        dev.WriteConfig(VirtioBalloon.ConfigActual, (uint)NumPages);
        Interlocked.Increment(ref oomDeflates);
        return freed;
    }

    /// <summary>Reports every free block of order ≥ 9 not reported yet, 32 per request; returns the pages reported.</summary>
    public long RequestReport(CancellationToken ct = default)
    {
        if (reportQ is null) throw new InvalidOperationException("free page reporting was not negotiated (feature REPORTING, bit 5)");
        var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        work.Add(new Report(done), ct);
        return done.Task.WaitAsync(ct).GetAwaiter().GetResult();
    }

    long ReportFreePages(CancellationToken ct)
    {
        long total = 0;
        while (true)
        {
            var blocks = alloc.IsolateUnreported(VirtioBalloon.ReportingOrder, VirtioBalloon.ReportingCapacity);
            if (blocks.Count == 0) break;
            try
            {
                var bufs = blocks.Select(b => new VirtqBuffer((ulong)b.Pfn << 12, (uint)(VirtioBalloon.PageSize << b.Order))).ToArray();
                Send(reportQ!, [], bufs, ct);
                Interlocked.Increment(ref reportRequests);
            }
            finally
            {
                alloc.ReturnReported(blocks);
            }
            long n = blocks.Sum(b => 1L << b.Order);
            total += n;
            Interlocked.Add(ref reportedPages, n);
        }
        return total;
    }

    Timer? reportTimer;

    /// <summary>Reports free pages every <paramref name="interval"/> (Linux's page_reporting runs 2 s after free pages pile up); null stops it.</summary>
    public void ReportEvery(TimeSpan? interval)
    {
        if (reportQ is null && interval is not null) throw new InvalidOperationException("free page reporting was not negotiated (feature REPORTING, bit 5)");
        reportTimer?.Dispose();
        reportTimer = interval is { } i && i > TimeSpan.Zero
            ? new Timer(_ => { try { work.Add(new Report(new TaskCompletionSource<long>())); } catch (InvalidOperationException) { } }, null, i, i)
            : null;
    }

    public void Dispose()
    {
        reportTimer?.Dispose();
        stop.Cancel();
        work.CompleteAdding();
        foreach (var t in new[] { irqThread, worker })
            if (t is not null && t.IsAlive && Thread.CurrentThread != t) t.Join(TimeSpan.FromSeconds(10));
        try { dev.WriteStatus(0); } catch (ObjectDisposedException) { }
        acked.Dispose();
        stop.Dispose();
    }
}
