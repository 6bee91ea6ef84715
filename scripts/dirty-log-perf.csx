// dirty-log-perf.csx — dirty_log_perf_test (the workload behind seed 001) on real KVM, or the simulator without /dev/kvm:
// populate, enable logging, N iterations of dirty memory / get (harvest) / clear (reset), disable; each iteration's
// collected set is checked against the pages the workload's plan writes in that pass.
// Options as the selftest's: -v --vcpus, -b --memory (per vCPU), -i --iterations, -w --write-percent, -a --random,
// -r --seed, -x --memslots, -s --backing, -o --overlap; and --mode get|manualprotect|manualprotectinitiallyset|ring,
// --clear-chunk (manual protect, multiple of 256K; 0 = whole slot), --ring-bytes (ring mode).
//
//   ./virtlab run scripts/dirty-log-perf.csx -- --vcpus 2 --memory 64M --mode ring --random --write-percent 50

var vcpus      = Arg("vcpus", 1);
var memory     = Arg("memory", 1.GiB(), test: 4.MiB());
var iterations = Arg("iterations", 2);
var writes     = Arg("write-percent", 100);
var random     = Arg("random", false);
var seed       = Arg("seed", 1);
var memslots   = Arg("memslots", 1);
var backing    = Arg("backing", Backing.Anonymous);
var overlap    = Arg("overlap", false);
var mode       = Arg("mode", DirtyLogMode.ManualProtect);
var chunk      = Arg("clear-chunk", 0.KiB());
var ringBytes  = Arg("ring-bytes", 64 * 1024);
var backend    = Arg("backend", Backend.Auto);
var allModes   = Arg("all-modes", false, test: true);     // run every collection mode in turn

var modes = allModes ? Enum.GetValues<DirtyLogMode>() : [mode];
foreach (var m in modes)
{
    var o = new DirtyLogPerfOptions
    {
        Vcpus = vcpus, MemoryPerVcpu = memory, Iterations = iterations, WritePercent = writes, RandomAccess = random, Seed = (uint)seed,
        Memslots = memslots, Backing = backing, Overlap = overlap, Mode = m, Backend = backend, RingBytes = ringBytes,
        ClearChunk = chunk.Bytes > 0 && m is (DirtyLogMode.ManualProtect or DirtyLogMode.ManualProtectInitiallySet) ? chunk : null,
    };
    Console.WriteLine($"==== {m} ====");
    var r = Stage($"dirty_log_perf_test {m}", () => Mmu.DirtyLogPerf(o, Cancellation));
    Show(r);
    Result($"dirty_log_perf_{m}", r);
    foreach (var it in r.Iterations)
        Expect(it.Matches, $"{m}: iteration {it.Iteration} collected exactly the {it.ExpectedPages} pages the plan wrote (got {it.DirtyPages})");
    Expect(r.Iterations.Count == iterations, $"{m}: {iterations} iterations ran");
}
