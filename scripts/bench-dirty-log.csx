// bench-dirty-log.csx — the KVM dirty-log harness against bare ioctls, bitmap scans, and ucall round trips.
//
//   virtlab run scripts/bench-dirty-log.csx -- --memory 1G --iterations 200 --stride 64K --round-trips 20000
//
// On a slot of --memory (1 GiB by default, KVM_MEM_LOG_DIRTY_PAGES, manual protect):
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
// Runs before anything else in this recipe touches the SDK, so each "first" row is the process's first call of that
// path: what a recipe's first timed stage would measure. "Steady" is the median of later calls of the same work, after
// a warm-up loop. Target: first ≤ 1.5 × steady. The run record's environment.preparation says how the process was
// prepared (ReadyToRun images, SDK warm-up, script optimisation) so a row that regresses can be explained.
var firstSlot = Arg("first-call-memory", 16.MiB(), test: 4.MiB());
var firstRows = new List<(string Path, double First, double Steady)>();
{
    double Ms(long t0) => (Stopwatch.GetTimestamp() - t0) * 1e3 / Stopwatch.Frequency;
    double Med(List<double> xs) { var o = xs.Order().ToArray(); return o[o.Length / 2]; }
    double Steady(Func<double> sample, int n = 51) { var w = Stopwatch.StartNew(); while (w.ElapsedMilliseconds < 200) sample(); var xs = new List<double>(); for (int i = 0; i < n; i++) xs.Add(sample()); return Med(xs); }
    VmOptions Opts(int ring = 0) => new VmOptions(firstSlot) { ManualProtect = ring == 0, LogDirtyPages = true, DirtyRingBytes = new Size(ring) };
    var populate = Workload.Write(stride: 4096);

    // Vm.Run of a small workload that populates a fresh slot (one write per 4 KiB page): first VM vs later fresh VMs.
    long t = Stopwatch.GetTimestamp();
    using var fvm = Vm.Create(Opts());
    double create1 = Ms(t);
    t = Stopwatch.GetTimestamp(); fvm.Run(populate); double run1 = Ms(t);
    var fslot = fvm.TestSlot;
    var fb = new DirtyBitmap(fslot.Pages);
    t = Stopwatch.GetTimestamp(); fslot.GetDirtyLog(fb); double get1 = Ms(t);
    var fmask = fb.Clone();
    t = Stopwatch.GetTimestamp(); fslot.ClearDirtyLog(fmask); double clear1 = Ms(t);
    t = Stopwatch.GetTimestamp(); long fcount = fb.Count; double count1 = Ms(t);
    // The recipe's own top-level loop: enumerating the set pages of a sparse 8 MiB bitmap (256 GiB of guest pages).
    var big = new DirtyBitmap(8L * 1024 * 1024 * 8);
    for (long p = 0; p < big.Pages; p += 997) big.Set(p);
    long fsum = 0;
    // The same top-level loop five times: the first pass is what a recipe's first measurement gets (Tier 0 / OSR code
    // unless script code is compiled optimized from the start), the best later pass is its steady state.
    var enumPasses = new List<double>();
    for (int rep = 0; rep < 5; rep++)
    {
        t = Stopwatch.GetTimestamp();
        foreach (var p in big.SetPages) fsum += p;
        enumPasses.Add(Ms(t));
    }
    double enum1 = enumPasses[0];
    // Guest memory: one 8-byte write and read per page of the slot, through vm.Memory.
    ulong g0 = fslot.Gpa;
    t = Stopwatch.GetTimestamp();
    for (long i = 0; i < fslot.Pages; i++) { fvm.Memory.Write<ulong>(g0 + (ulong)(i << 12), (ulong)i); fsum += (long)fvm.Memory.Read<ulong>(g0 + (ulong)(i << 12)); }
    double mem1 = Ms(t);

    using var rvm = Vm.Create(Opts(ring: 65536));
    rvm.Run(populate);
    t = Stopwatch.GetTimestamp(); var harvested = rvm.DirtyRing!.Harvest(); double harvest1 = Ms(t);
    t = Stopwatch.GetTimestamp(); rvm.DirtyRing.Reset(); double reset1 = Ms(t);

    // Steady state of the same work.
    double runS = Med(Enumerable.Range(0, 3).Select(_ => { using var v = Vm.Create(Opts()); long t0 = Stopwatch.GetTimestamp(); v.Run(populate); return Ms(t0); }).ToList());
    double getS = Steady(() => { fvm.Run(populate); long t0 = Stopwatch.GetTimestamp(); fslot.GetDirtyLog(fb); return Ms(t0); }, 11);
    double clearS = Steady(() => { long t0 = Stopwatch.GetTimestamp(); fslot.ClearDirtyLog(fmask); return Ms(t0); });
    double countS = Steady(() => { long t0 = Stopwatch.GetTimestamp(); fsum += fb.Count; return Ms(t0); });
    double enumS = enumPasses.Skip(1).Min();
    double memS = Steady(() => { long t0 = Stopwatch.GetTimestamp(); for (long i = 0; i < fslot.Pages; i++) { fvm.Memory.Write<ulong>(g0 + (ulong)(i << 12), (ulong)i); fsum += (long)fvm.Memory.Read<ulong>(g0 + (ulong)(i << 12)); } return Ms(t0); }, 11);
    var hs = new List<double>(); var rs2 = new List<double>(); var seen = new List<int>();
    for (int i = 0; i < (TestMode ? 3 : 7); i++)
    {
        rvm.Run(populate);
        long t0 = Stopwatch.GetTimestamp(); var h = rvm.DirtyRing.Harvest(); hs.Add(Ms(t0));
        t0 = Stopwatch.GetTimestamp(); rvm.DirtyRing.Reset(); rs2.Add(Ms(t0));
        seen.Add(h.Count);
    }
    Expect(seen.All(n => n == harvested.Count), $"the ring harvest sees the same {harvested.Count} pages each pass (got {string.Join(", ", seen)})");
    firstRows.Add(("Vm.Run (populate)", run1, runS));
    firstRows.Add(("slot.GetDirtyLog", get1, getS));
    firstRows.Add(("slot.ClearDirtyLog", clear1, clearS));
    firstRows.Add(("DirtyRing.Harvest", harvest1, Med(hs)));
    firstRows.Add(("DirtyRing.Reset", reset1, Med(rs2)));
    firstRows.Add(("DirtyBitmap.Count", count1, countS));
    firstRows.Add(("SetPages, top-level foreach", enum1, enumS));
    firstRows.Add(("vm.Memory write+read/page", mem1, memS));
    Console.WriteLine($"first call vs steady ({fvm.Backend} backend, {firstSlot} slot; first Vm.Create {create1:F1} ms; top-level SetPages " +
        $"{big.SizeInBytes / enum1 / 1e6:F1} GB/s first, {big.SizeInBytes / enumS / 1e6:F1} GB/s steady; sink {fsum % 10}):");
    foreach (var (path, first, steady) in firstRows)
    {
        Console.WriteLine($"  {path,-30} first {first,9:F3} ms   steady {steady,9:F3} ms   × {first / steady,6:F2}");
        var key = new string(path.ToLowerInvariant().Select(c => char.IsLetterOrDigit(c) ? c : '_').ToArray()).Trim('_');
        Result($"first_{key}_ms", first);
        Result($"steady_{key}_ms", steady);
        // The target (issue 8) is for KVM at full size; the simulator's µs-scale steady states are reported, not judged.
        if (!TestMode && fvm.Backend == Backend.Kvm)
            Expect(first <= 1.5 * steady, $"first call of {path} ≤ 1.5 × steady ({first:F3} vs {steady:F3} ms)");
    }
    Expect(fcount == fslot.Pages, $"the populate dirtied every page of the slot ({fcount} of {fslot.Pages})");
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
