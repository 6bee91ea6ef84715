// bench-mmu-model.csx — how fast the TDP MMU model is, how much memory it takes, and what the dirty-log-perf harness
// costs over the same work written directly against the Vm API.
//
//   ./virtlab run scripts/bench-mmu-model.csx -- --model-memory 64G --vm-memory 256M --vcpus 2
//
// 1. A --model-memory slot (64 GiB: 16 M SPTEs) mapped at 4 KiB: write-protect sweeps (wrprot_gfn_range, min level 4 KiB)
//    over all of it — target ≤ 50 ms each; then one full dirty-log-perf iteration of the model (every page written:
//    a fast fault each, then GET and CLEAR of the whole slot in manual-protect mode); model memory per GiB mapped.
// 2. Mmu.DirtyLogPerf against the same populate / enable / iterations / get / clear written directly with vm.Run and
//    MemSlot.GetDirtyLog / ClearDirtyLog, alternating, several rounds: medians of the measured phases (target within 5 %).

using System.Diagnostics;

var modelMemory = Arg("model-memory", 64.GiB(), test: 1.GiB());
var sweeps      = Arg("sweeps", 10, test: 3);
var vmMemory    = Arg("vm-memory", 64.MiB(), test: 4.MiB());     // per vCPU
var vcpus       = Arg("vcpus", 2);
var rounds      = Arg("rounds", 5, test: 2);
var iterations  = Arg("iterations", 3, test: 2);
var backend     = Arg("backend", Backend.Auto);

// ---- 1. the model (skipped with --model-memory 0) ----------------------------------------------------------
const ulong SlotGpa = 1UL << 40;
if (modelMemory.Bytes > 0) ModelBench();
void ModelBench() {
var m = Mmu.Model(new TdpMmuOptions { ManualProtect = true });
m.AddSlot(1, SlotGpa, modelMemory, Backing.Anonymous);
long pages = modelMemory.Pages4K;
ulong baseGfn = SlotGpa >> 12, endGfn = baseGfn + (ulong)pages;
Stage("model: map every page (4 KiB faults)", () =>
{
    for (long p = 0; p < pages; p++) m.Access(0, SlotGpa + (ulong)(p << 12), write: true);
    Count("faults", m["pf_taken"]);
});
Expect(m["pages_4k"] == pages, $"{pages:N0} 4 KiB SPTEs mapped");
double perGiB = m.MemoryBytes / (double)(modelMemory.Bytes >> 30);
Console.WriteLine($"model memory: {new Size(m.MemoryBytes)} for {modelMemory} mapped at 4 KiB = {perGiB / 1024:0.#} KiB per GiB (KVM itself: 2 MiB of page tables per GiB at 4 KiB)");
Result("model_bytes_per_gib_4k", perGiB);

// Sweeps: write-protect everything, make it writable again (a flat pass, not timed), repeat; the median counts.
static long Sweep(TdpMmu m, ulong a, ulong b) { var t = Stopwatch.GetTimestamp(); m.WrprotGfnRange(a, b, 1); return Stopwatch.GetTimestamp() - t; }
var times = new List<double>();
for (int i = 0; i < sweeps; i++)
{
    if (i > 0) for (long p = 0; p < pages; p += 1) m.Access(0, SlotGpa + (ulong)(p << 12), write: true); // W back (fast faults)
    times.Add(Sweep(m, baseGfn, endGfn) * 1e3 / Stopwatch.Frequency);
}
times.Sort();
double median = times[times.Count / 2];
Console.WriteLine($"write-protect sweep of {modelMemory} at 4 KiB ({pages:N0} SPTEs): median {median:0.0} ms, best {times[0]:0.0} ms over {sweeps} " +
                  $"({pages / (median / 1e3) / 1e9:0.00} G SPTEs/s)");
Result("wrprot_sweep_ms_median", median);
Result("wrprot_sweep_ms_best", times[0]);
if (!TestMode && modelMemory.Bytes == 64L << 30) Expect(median <= 50, $"write-protect sweep of 64 GiB at 4 KiB ≤ 50 ms (median {median:0.0} ms)");

// One dirty-log-perf iteration of the model: logging on (everything write-protected), every page written, GET, CLEAR.
m.SetLogDirtyPages(1, true);
var iter = Stopwatch.StartNew();
long before = m["pf_fast"];
Stage("model: dirty every page (fast faults)", () => { for (long p = 0; p < pages; p++) m.Access(0, SlotGpa + (ulong)(p << 12), write: true); });
var log = Stage("model: get dirty log", () => m.GetDirtyLog(1));
Stage("model: clear dirty log", () => m.ClearDirtyLog(1, 0, pages, log));
iter.Stop();
Expect(log.Count == pages && m["pf_fast"] - before == pages, "the model's iteration dirtied and reported every page, one fast fault each");
Console.WriteLine($"one dirty-log-perf iteration of the model on {modelMemory}: {iter.Elapsed.TotalMilliseconds:0} ms ({pages:N0} write faults, GET, CLEAR)");
Result("model_iteration_ms", iter.Elapsed.TotalMilliseconds);
}
GC.Collect();

// ---- 2. harness vs direct ----------------------------------------------------------------------------------
Mmu.Log = null;
var o = new DirtyLogPerfOptions { Vcpus = vcpus, MemoryPerVcpu = vmMemory, Iterations = iterations, Mode = DirtyLogMode.ManualProtect, Backend = backend };
(double Dirty, double GetClear) Direct()
{
    // The selftest's loop, by hand: populate, enable, per iteration dirty / get / clear.
    using var vm = Vm.Create(new VmOptions(new Size(vmMemory.Bytes * vcpus)) { Vcpus = vcpus, Backend = backend, ManualProtect = true });
    var slot = vm.TestSlot;
    vm.Run(Workload.DirtyLogPerfPopulate());
    slot.LogDirtyPages = true;
    var bitmap = new DirtyBitmap(slot.Pages);
    double getClear = 0;
    var r = vm.Run(Workload.DirtyLogPerf(iterations: iterations), afterPass: _ =>
    {
        var t = Stopwatch.GetTimestamp();
        slot.GetDirtyLog(bitmap);
        slot.ClearDirtyLog(0, slot.Pages, bitmap);
        getClear += Stopwatch.GetElapsedTime(t).TotalSeconds;
    });
    slot.LogDirtyPages = false;
    return (r.PassTimes.Sum(p => p.TotalSeconds), getClear);
}
(double Dirty, double GetClear) Harness()
{
    var r = Mmu.DirtyLogPerf(o);
    Expect(r.AllMatch, "harness: every iteration collected exactly the planned pages");
    return (r.Iterations.Sum(i => i.DirtySeconds), r.Iterations.Sum(i => i.GetSeconds + i.ClearSeconds));
}
Direct(); Harness(); // warm up
var h = new List<(double Dirty, double GetClear)>(); var d = new List<(double Dirty, double GetClear)>();
for (int i = 0; i < rounds; i++)
{
    // Alternate which goes first, so drift and the other's leftovers hit both alike.
    if (i % 2 == 0) { h.Add(Harness()); d.Add(Direct()); }
    else { d.Add(Direct()); h.Add(Harness()); }
}
static double Median(IEnumerable<double> xs) { var a = xs.Order().ToArray(); return a[a.Length / 2]; }
double hd = Median(h.Select(x => x.Dirty)), dd = Median(d.Select(x => x.Dirty));
double hg = Median(h.Select(x => x.GetClear)), dg = Median(d.Select(x => x.GetClear));
double hm = Median(h.Select(x => x.Dirty + x.GetClear)), dm = Median(d.Select(x => x.Dirty + x.GetClear)), overhead = (hm / dm - 1) * 100;
Console.WriteLine($"dirty-log-perf, {vcpus} vCPUs × {vmMemory}, {iterations} iterations on {(Vm.IsKvmUsable(out _) && backend != Backend.Sim ? "KVM" : "Sim")} (medians of {rounds}):");
Console.WriteLine($"  dirty memory   harness {hd * 1e3,8:0.00} ms   direct {dd * 1e3,8:0.00} ms");
Console.WriteLine($"  get + clear    harness {hg * 1e3,8:0.00} ms   direct {dg * 1e3,8:0.00} ms");
Console.WriteLine($"  together       harness {hm * 1e3,8:0.00} ms   direct {dm * 1e3,8:0.00} ms   {overhead:+0.0;-0.0} %");
Result("harness_ms", hm * 1e3);
Result("direct_ms", dm * 1e3);
Result("harness_get_clear_ms", hg * 1e3);
Result("direct_get_clear_ms", dg * 1e3);
Result("harness_overhead_percent", overhead);
if (!TestMode) Expect(overhead <= 5, $"the harness is within 5 % of the direct loop ({overhead:+0.0;-0.0} %)");
