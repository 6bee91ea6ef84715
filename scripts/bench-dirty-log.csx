// bench-dirty-log.csx — the KVM dirty-log harness against bare ioctls, bitmap scans, and ucall round trips.
//
//   virtlab run scripts/bench-dirty-log.csx -- --memory 1G --iterations 200 --stride 64K --round-trips 20000
//
// First (issue 8), on fresh --first-call-memory VMs, --first-call-rounds times: each hot path's first call in this process
// against the same call on later rounds (same kernel work, same state), the raw ioctls' own first calls, and a populate
// through Vm.Run against the same populate with bare ioctls (KvmRawIoctls.Populate). Targets: first ≤ 1.5 × steady;
// harness populate ≤ 1.2 × raw in CPU time of the thread that runs the vCPU.
// Then, on a slot of --memory (1 GiB by default, KVM_MEM_LOG_DIRTY_PAGES, manual protect):
//   1. the guest dirties every --stride of the slot (emulated guests are slow: keep the stride coarse);
//   2. KVM_GET_DIRTY_LOG and KVM_CLEAR_DIRTY_LOG, --iterations times each, through the harness
//      (MemSlot.GetDirtyLog(into), MemSlot.ClearDirtyLog(mask)) and raw (KvmRawIoctls: the bare ioctl in a loop);
//   3. scans of the 1 GiB slot's bitmap: Count (popcount) and enumeration of set pages and runs;
//   4. KVM_RUN round trips per second through the guest→host channel (`out dx, eax` on port 0x1000);
//   5. how fast cancellation stops a vCPU that is running guest code (immediate_exit + kick signal).
// Targets (issue 3): harness ≤ 5% over the raw ioctls; bitmap scans ≥ 10 GB/s of bitmap.

using System.Diagnostics;
using Iced.Intel;
using VirtLab.Sdk.Machine.Kvm.Benchmarks; // KvmRawIoctls: not in the default script imports
using static Iced.Intel.AssemblerRegisters;
using VirtLab.Sdk.Machine.Kvm;

var memory = Arg("memory", 1.GiB(), test: 64.MiB());
var iterations = Arg("iterations", 50000, test: 5000);
var stride = Arg("stride", 64.KiB(), test: 256.KiB());
var roundTrips = Arg("round-trips", 20000, test: 2000);
var scans = Arg("scans", 2000, test: 200);

// ── 0. First call vs steady state (issue 8) ─────────────────────────────────────────────────────────────────────
// Runs before anything else in this recipe touches the SDK, so round 0 is the process's first call of each path: what a
// recipe's first timed stage would measure. The same round then runs again on fresh objects, so every later sample is
// the same kernel work on the same kernel state (a fresh VM populated by the guest, a clear that re-protects the pages
// the populate dirtied, a ring holding the populate's entries) and the same cache state (after a guest run). "Steady" is
// the median of rounds 1…. Target: first ≤ 1.5 × steady. The raw rows (KvmRawIoctls: the bare ioctl on a fresh VM of
// its own, same state) show the kernel's own first-call cost, which is not the JIT's. Timestamps are taken inline in
// top-level code (no delegate or local function whose first JIT would land inside a timed call). The run record's
// environment.preparation says how the process was prepared (ReadyToRun images, warm-up, script optimisation).
var firstSlot = Arg("first-call-memory", 16.MiB(), test: 4.MiB());
var rounds = Arg("first-call-rounds", 7, test: 3);
{
    var samples = new Dictionary<string, List<double>>();
    var gcInFirst = new HashSet<string>();
    var order = new List<string>();
    double ToMs(long ticks) => ticks * 1e3 / Stopwatch.Frequency;
    var cpuSamples = new Dictionary<string, List<double>>();
    void Rec(string path, long t0, long t1, int gcBefore, int round, double cpuSeconds = double.NaN)
    {
        if (!samples.TryGetValue(path, out var xs)) { samples[path] = xs = []; order.Add(path); }
        xs.Add(ToMs(t1 - t0));
        if (!double.IsNaN(cpuSeconds)) { if (!cpuSamples.TryGetValue(path, out var cs)) cpuSamples[path] = cs = []; cs.Add(cpuSeconds * 1e3); }
        if (round == 0 && GC.CollectionCount(0) != gcBefore) gcInFirst.Add(path);
    }
    double Med(IEnumerable<double> xs) { var o = xs.Order().ToArray(); return o.Length == 0 ? double.NaN : o[o.Length / 2]; }
    VmOptions Opts(int ring = 0) => new VmOptions(firstSlot) { ManualProtect = ring == 0, LogDirtyPages = true, DirtyRingBytes = new Size(ring) };
    var populate = Workload.Write(stride: 4096);
    Rec("(timing helper)", 0, 0, 0, 1, ThreadCpu.Seconds); samples.Clear(); cpuSamples.Clear(); order.Clear(); // JIT and bind the helpers before round 0

    // The recipe's own top-level loop: enumerating the set pages of a sparse 8 MiB bitmap (256 GiB of guest pages).
    var big = new DirtyBitmap(8L * 1024 * 1024 * 8);
    for (long p = 0; p < big.Pages; p += 997) big.Set(p);
    long fsum = 0, fcount = 0, fpages = 0;
    double create1 = 0;
    var harvestCounts = new List<int>();
    var raws = new List<RawPopulateTimes>();
    bool kvm = false;
    for (int round = 0; round < rounds; round++)
    {
        long t0, t1; int g; double c0, c1;
        // Vm.Run of a small workload that populates a fresh slot (one write per 4 KiB page).
        t0 = Stopwatch.GetTimestamp();
        using var fvm = Vm.Create(Opts());
        t1 = Stopwatch.GetTimestamp();
        if (round == 0) create1 = ToMs(t1 - t0);
        kvm = fvm.Backend == Backend.Kvm;
        var fslot = fvm.TestSlot;
        // The same populate with bare ioctls on a second fresh VM (guest code and page tables prepared untimed); the two
        // alternate which goes first, so drift and the order inside a round hit both alike.
        using var rvm = kvm ? Vm.Create(Opts()) : null;
        for (int k = 0; k < 2; k++)
        {
            if ((k == 0) == (round % 2 == 0))
            {
                g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
                fvm.Run(populate);
                t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("Vm.Run (populate, fresh VM)", t0, t1, g, round, c1 - c0);
            }
            else if (rvm is not null)
            {
                var raw = KvmRawIoctls.Populate(rvm, populate);
                raws.Add(raw);
                Rec("raw populate (SREGS/REGS + KVM_RUN)", 0, (long)(raw.TimedSeconds * Stopwatch.Frequency), 0, 1, raw.CpuSeconds);
            }
        }

        // KVM_GET_DIRTY_LOG after the populate: harness, then the raw ioctl on the other VM (same state).
        var fb = new DirtyBitmap(fslot.Pages);
        g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
        fslot.GetDirtyLog(fb);
        t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("slot.GetDirtyLog", t0, t1, g, round, c1 - c0);
        var rb = fb;
        if (rvm is not null)
        {
            rb = new DirtyBitmap(rvm.TestSlot.Pages);
            g = GC.CollectionCount(0);
            double s = KvmRawIoctls.GetDirtyLog(rvm, rvm.TestSlot, rb, 1);
            Rec("raw KVM_GET_DIRTY_LOG", 0, (long)(s * Stopwatch.Frequency), g, round);
        }
        // KVM_CLEAR_DIRTY_LOG of what the populate dirtied: re-protects every page of the slot, each round.
        var fmask = fb.Clone();
        g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
        fslot.ClearDirtyLog(fmask);
        t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("slot.ClearDirtyLog (re-protect)", t0, t1, g, round, c1 - c0);
        if (rvm is not null)
        {
            g = GC.CollectionCount(0);
            double s = KvmRawIoctls.ClearDirtyLog(rvm, rvm.TestSlot, rb.Clone(), 1);
            Rec("raw KVM_CLEAR_DIRTY_LOG", 0, (long)(s * Stopwatch.Frequency), g, round);
        }
        g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
        long count = fb.Count;
        t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("DirtyBitmap.Count", t0, t1, g, round, c1 - c0);
        if (round == 0) { fcount = count; fpages = fslot.Pages; }

        // Guest memory: one 8-byte write and read per page of the slot, through vm.Memory.
        ulong g0 = fslot.Gpa;
        g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
        for (long i = 0; i < fslot.Pages; i++) { fvm.Memory.Write<ulong>(g0 + (ulong)(i << 12), (ulong)i); fsum += (long)fvm.Memory.Read<ulong>(g0 + (ulong)(i << 12)); }
        t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("vm.Memory write+read/page", t0, t1, g, round, c1 - c0);

        // The dirty ring after a populate of a fresh VM: harvest every entry, then reset.
        using var ringVm = Vm.Create(Opts(ring: 65536));
        ringVm.Run(populate);
        g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
        var h = ringVm.DirtyRing!.Harvest();
        t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("DirtyRing.Harvest", t0, t1, g, round, c1 - c0);
        g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
        ringVm.DirtyRing.Reset();
        t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("DirtyRing.Reset", t0, t1, g, round, c1 - c0);
        harvestCounts.Add(h.Count);

        // The recipe's own top-level loop: round 0 is its first pass (Tier 0 / OSR code unless script code is compiled
        // optimized from the start), later rounds the same loop again.
        g = GC.CollectionCount(0); c0 = ThreadCpu.Seconds; t0 = Stopwatch.GetTimestamp();
        foreach (var p in big.SetPages) fsum += p;
        t1 = Stopwatch.GetTimestamp(); c1 = ThreadCpu.Seconds; Rec("SetPages, top-level foreach", t0, t1, g, round, c1 - c0);
    }
    Expect(harvestCounts.All(n => n == harvestCounts[0]), $"the ring harvest sees the same {harvestCounts[0]} pages each round (got {string.Join(", ", harvestCounts)})");
    Expect(fcount == fpages, $"the populate dirtied every page of the slot ({fcount} of {fpages})");

    double enumFirst = samples["SetPages, top-level foreach"][0], enumSteady = Med(samples["SetPages, top-level foreach"].Skip(1));
    Console.WriteLine($"first call vs steady ({(kvm ? "Kvm" : "Sim")} backend, {firstSlot} slot, {rounds} rounds on fresh VMs; first Vm.Create {create1:F1} ms; " +
        $"top-level SetPages {big.SizeInBytes / enumFirst / 1e6:F1} GB/s first, {big.SizeInBytes / enumSteady / 1e6:F1} GB/s steady; sink {fsum % 10}):");
    // Judged on the thread's CPU time where a row takes long enough for it (steady ≥ 0.1 ms): a single wall-clock first
    // sample of a millisecond is often stretched by a wait for a CPU on a busy host (load 10+ on 2 cores here), which the
    // steady median is not; warm-up costs (JIT, page faults, a collection) are this thread's CPU time and show in both.
    foreach (var path in order)
    {
        var xs = samples[path];
        double first = xs[0], steady = Med(xs.Skip(1));
        bool raw = path.StartsWith("raw ");
        string gc = gcInFirst.Contains(path) ? "  (a GC ran during the first call)" : "";
        double cpuFirst = double.NaN, cpuSteady = double.NaN;
        if (cpuSamples.TryGetValue(path, out var cs) && cs.Count == xs.Count) { cpuFirst = cs[0]; cpuSteady = Med(cs.Skip(1)); }
        bool byCpu = !double.IsNaN(cpuFirst) && steady >= 0.1;
        string cpu = double.IsNaN(cpuFirst) || steady < 0.1 ? "" : $"   CPU {cpuFirst,8:F3} / {cpuSteady,8:F3} ms × {cpuFirst / cpuSteady,5:F2}";
        Console.WriteLine($"  {path,-38} first {first,9:F3} ms   steady {steady,9:F3} ms   × {first / steady,6:F2}{cpu}{gc}");
        var key = new string(path.ToLowerInvariant().Select(c => char.IsLetterOrDigit(c) ? c : '_').ToArray()).Trim('_');
        while (key.Contains("__")) key = key.Replace("__", "_");
        Result($"first_{key}_ms", first);
        Result($"steady_{key}_ms", steady);
        if (byCpu) { Result($"first_{key}_cpu_ms", cpuFirst); Result($"steady_{key}_cpu_ms", cpuSteady); }
        // The target (issue 8) is for the harness on KVM at full size; the raw rows show the kernel's own first-call
        // cost (not process warm-up); the simulator's µs-scale steady states are reported, not judged.
        if (!TestMode && kvm && !raw)
        {
            if (byCpu) Expect(cpuFirst <= 1.5 * cpuSteady, $"first call of {path} ≤ 1.5 × steady in CPU time ({cpuFirst:F3} vs {cpuSteady:F3} ms; wall {first:F3} vs {steady:F3})");
            else Expect(first <= 1.5 * steady, $"first call of {path} ≤ 1.5 × steady ({first:F3} vs {steady:F3} ms)");
        }
    }

    // Populate through the harness vs bare ioctls on fresh VMs of the same run (issue 8: harness ≤ 1.2 × raw). Both run
    // the vCPU on this thread, so its CPU time compares them without the waits for a CPU a busy host adds to wall time.
    if (raws.Count > 0)
    {
        double harness = Med(samples["Vm.Run (populate, fresh VM)"]), hcpu = Med(cpuSamples["Vm.Run (populate, fresh VM)"]);
        double rawTimed = Med(raws.Select(r => r.TimedSeconds * 1e3)), rcpu = Med(raws.Select(r => r.CpuSeconds * 1e3));
        double rawAll = Med(raws.Select(r => (r.TimedSeconds + r.PrepareSeconds) * 1e3));
        Console.WriteLine($"populate {firstSlot}, medians of {raws.Count} fresh VMs: harness Vm.Run {harness:F2} ms wall / {hcpu:F2} ms CPU, " +
            $"raw {rawTimed:F2} ms wall / {rcpu:F2} ms CPU (× {harness / rawTimed:F3} wall, × {hcpu / rcpu:F3} CPU)");
        Console.WriteLine($"  raw: SREGS/REGS {Med(raws.Select(r => r.RegsSeconds * 1e3)):F3} ms + KVM_RUN {Med(raws.Select(r => r.RunSeconds * 1e3)):F2} ms ({raws[0].Exits} exits); " +
            $"in Vm.Run, untimed in raw: plan + page tables + records + guest code {Med(raws.Select(r => r.PrepareSeconds * 1e3)):F3} ms; " +
            $"in Vm.Create, outside both: KVM_CREATE_VCPU + mmap + SET_CPUID2 {Med(raws.Select(r => r.VcpuCreateSeconds * 1e3)):F3} ms per vCPU; " +
            $"harness − raw = {harness - rawTimed:F2} ms wall, {hcpu - rcpu:F2} ms CPU (wall × {harness / rawAll:F3} of raw with its preparation)");
        Result("populate_harness_ms", harness);
        Result("populate_raw_ms", rawTimed);
        Result("populate_harness_cpu_ms", hcpu);
        Result("populate_raw_cpu_ms", rcpu);
        Result("populate_raw_prepare_ms", Med(raws.Select(r => r.PrepareSeconds * 1e3)));
        if (!TestMode) Expect(hcpu <= 1.2 * rcpu, $"populate through the harness ≤ 1.2 × raw ioctls, in CPU time of the thread that runs the vCPU ({hcpu:F2} vs {rcpu:F2} ms)");
    }
}

Require(Vm.IsKvmUsable(out var why), "needs /dev/kvm: " + why);

var vm = Vm.Create(new VmOptions(memory) { Backend = Backend.Kvm, ManualProtect = true, LogDirtyPages = true });
var slot = vm.TestSlot;
Console.WriteLine($"{vm}; slot 1 at 0x{slot.Gpa:x}, {slot.Pages} pages, bitmap {new Size(DirtyBitmap.WordsFor(slot.Pages) * 8L)}");

// 1. Dirty every stride of the slot from the guest.
var dirtied = Stage("guest dirties memory", () => vm.Run(Workload.Write(stride: stride.Bytes)));
Console.WriteLine(dirtied);

// 2. get / clear: harness vs raw. Warm up each path once, then alternate blocks so drift hits both alike.
var bitmap = new DirtyBitmap(slot.Pages);
slot.GetDirtyLog(bitmap);
var pattern = bitmap.Clone();
long dirtyCount = bitmap.Count;
var mask = bitmap.Clone();
slot.ClearDirtyLog(mask);
mask.SetAll();

// Tiered JIT: run every measured path for a while first, so tier-1 code is what gets timed.
void WarmUp(Action a) { var w = Stopwatch.StartNew(); while (w.ElapsedMilliseconds < 400) a(); }
WarmUp(() => slot.GetDirtyLog(bitmap));
WarmUp(() => KvmRawIoctls.GetDirtyLog(vm, slot, bitmap, 10));
WarmUp(() => slot.ClearDirtyLog(mask));
WarmUp(() => KvmRawIoctls.ClearDirtyLog(vm, slot, mask, 10));

// Call by call, alternating harness and raw, each call timed on its own (both timings include one timestamp pair);
// the medians of many samples are robust to other load on the host, which only ever adds time.
var hg = new List<double>(iterations); var rg = new List<double>(iterations);
var hc = new List<double>(iterations); var rc = new List<double>(iterations);
double Us(long ticks) => ticks * 1e6 / Stopwatch.Frequency;
Stage("get-dirty-log", () =>
{
    for (int i = 0; i < iterations; i++)
    {
        long t0 = Stopwatch.GetTimestamp();
        slot.GetDirtyLog(bitmap);
        hg.Add(Us(Stopwatch.GetTimestamp() - t0));
        rg.Add(KvmRawIoctls.GetDirtyLog(vm, slot, bitmap, 1) * 1e6);
    }
    Count("ioctls", 2L * iterations);
});
Stage("clear-dirty-log", () =>
{
    for (int i = 0; i < iterations / 10; i++)
    {
        long t0 = Stopwatch.GetTimestamp();
        slot.ClearDirtyLog(mask);
        hc.Add(Us(Stopwatch.GetTimestamp() - t0));
        rc.Add(KvmRawIoctls.ClearDirtyLog(vm, slot, mask, 1) * 1e6);
    }
    Count("ioctls", 2L * (iterations / 10));
});
double Median(List<double> xs) { var o = xs.Order().ToArray(); return o[o.Length / 2]; }
double P10(List<double> xs) { var o = xs.Order().ToArray(); return o[o.Length / 10]; }
double getOverhead = (Median(hg) / Median(rg) - 1) * 100;
double clearOverhead = (Median(hc) / Median(rc) - 1) * 100;
Console.WriteLine($"KVM_GET_DIRTY_LOG   harness {Median(hg),8:F3} µs   raw {Median(rg),8:F3} µs   overhead {getOverhead,6:F2}%   (medians of {hg.Count}; p10 {P10(hg):F3} / {P10(rg):F3} µs)");
Console.WriteLine($"KVM_CLEAR_DIRTY_LOG harness {Median(hc),8:F3} µs   raw {Median(rc),8:F3} µs   overhead {clearOverhead,6:F2}%   (medians of {hc.Count}; p10 {P10(hc):F3} / {P10(rc):F3} µs)");
Result("get_dirty_log_harness_us", Median(hg));
Result("get_dirty_log_raw_us", Median(rg));
Result("clear_dirty_log_harness_us", Median(hc));
Result("clear_dirty_log_raw_us", Median(rc));
// Performance targets hold for the full-size run; test mode (a 64 MiB slot, ~0.1 µs ioctls) only checks it works.
if (!TestMode)
{
    Expect(getOverhead <= 5, $"harness adds ≤ 5% to KVM_GET_DIRTY_LOG (got {getOverhead:F2}%)");
    Expect(clearOverhead <= 5, $"harness adds ≤ 5% to KVM_CLEAR_DIRTY_LOG (got {clearOverhead:F2}%)");
}

// 3. Bitmap scans (GB/s of bitmap; one bitmap byte covers 32 KiB of guest memory): the guest's pattern
//    (every stride dirty) and a sparse one (0.1% of pages), so both the per-bit and the per-word loops show.
var sparse = new DirtyBitmap(slot.Pages);
for (long p = 0; p < sparse.Pages; p += 997) sparse.Set(p);
// Each scan is a local function, warmed up and then timed, so the timed code is the JIT's optimised tier (a loop in the
// script's top-level code would run as on-stack-replacement code instead) and the sum stays in a register.
static long ScanCount(DirtyBitmap b) => b.Count;
static long ScanSetPages(DirtyBitmap b) { long s = 0; foreach (var p in b.SetPages) s += p; return s; }
static long ScanRuns(DirtyBitmap b) { long s = 0; foreach (var r in b.Runs) s += r.Count; return s; }
long sink = 0;
foreach (var (label, bm) in new[] { ("guest pattern", pattern), ("sparse 0.1%", sparse) })
{
    double bytes = bm.SizeInBytes;
    double Gbps(Func<DirtyBitmap, long> scan)
    {
        WarmUp(() => sink += scan(bm));
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < scans; i++) sink += scan(bm);
        return bytes * scans / sw.Elapsed.TotalSeconds / 1e9;
    }
    var count = Gbps(ScanCount);
    var enumerate = Gbps(ScanSetPages);
    var runs = Gbps(ScanRuns);
    long setPages = bm.Count;
    Console.WriteLine($"bitmap scan, {label} ({setPages} of {bm.Pages} set, {new Size((long)bytes)}): count {count:F1} GB/s, " +
        $"set pages {enumerate:F1} GB/s ({setPages * enumerate / bytes * 1e3:F0} M pages/s), runs {runs:F1} GB/s");
    var key = label.StartsWith("sparse") ? "sparse" : "pattern";
    Result($"bitmap_{key}_count_gbps", count);
    Result($"bitmap_{key}_set_pages_gbps", enumerate);
    Result($"bitmap_{key}_runs_gbps", runs);
    if (!TestMode)
    {
        Expect(count >= 10, $"bitmap count ({label}) ≥ 10 GB/s");
        Expect(enumerate >= 10 || !label.StartsWith("sparse"), $"set-page enumeration of a sparse bitmap ≥ 10 GB/s");
    }
}
Console.WriteLine($"(sink {sink % 10})");

// 4. KVM_RUN round trips through the ucall channel: a guest loop of `out` exits (no register reads on the host).
var rt = Stopwatch.StartNew();
vm.RunAssembly(a =>
{
    var loop = a.CreateLabel();
    a.mov(ecx, roundTrips);
    a.Label(ref loop);
    a.UcallYield();
    a.dec(ecx);
    a.jnz(loop);
});
var rtTime = rt.Elapsed;
double perSecond = roundTrips / rtTime.TotalSeconds;
Console.WriteLine($"KVM_RUN round trips via port 0x1000: {perSecond:N0}/s ({rtTime.TotalMicroseconds / roundTrips:F2} µs each, guest instructions emulated on this host)");
Result("kvm_run_round_trips_per_second", perSecond);

// With a sync per round trip the host also reads rsi (KVM_GET_REGS).
long syncs = 0;
var rs = Stopwatch.StartNew();
vm.RunAssembly(a =>
{
    var loop = a.CreateLabel();
    a.mov(ecx, roundTrips);
    a.Label(ref loop);
    a.mov(rsi, rcx);
    a.UcallSync();
    a.dec(ecx);
    a.jnz(loop);
}, onSync: (_, _) => syncs++);
Console.WriteLine($"sync ucalls (exit + KVM_GET_REGS): {syncs / rs.Elapsed.TotalSeconds:N0}/s");
Result("sync_ucalls_per_second", syncs / rs.Elapsed.TotalSeconds);
Expect(syncs == roundTrips, "every sync reached the host");
// 5. Cancellation: a vCPU in the middle of an endless workload stops through immediate_exit + the kick signal.
var stops = new List<double>();
for (int i = 0; i < (TestMode ? 2 : 10); i++)
{
    using var cts = new CancellationTokenSource();
    using var underWay = new ManualResetEventSlim();
    var run = vm.RunAsync(Workload.Write(stride: stride.Bytes) with { Passes = 1_000_000 }, _ => underWay.Set(), cts.Token);
    if (!underWay.Wait(TimeSpan.FromSeconds(60))) throw new TimeoutException("the first pass never completed");
    Thread.Sleep(20);                           // inside a pass, the vCPU in KVM_RUN
    var cancel = Stopwatch.StartNew();
    cts.Cancel();
    try { run.Wait(); } catch (AggregateException e) when (e.InnerException is OperationCanceledException) { }
    stops.Add(cancel.Elapsed.TotalMilliseconds);
}
stops.Sort();
Console.WriteLine($"cancellation of a running vCPU: median {stops[stops.Count / 2]:F1} ms, worst {stops[^1]:F1} ms");
Result("cancel_median_ms", stops[stops.Count / 2]);
Result("cancel_worst_ms", stops[^1]);
if (!TestMode) Expect(stops[^1] < 1000, $"a running vCPU stops within a second of cancellation (worst {stops[^1]:F1} ms)");

Console.WriteLine($"{dirtyCount} pages were dirty after the guest pass");
vm.Dispose();
