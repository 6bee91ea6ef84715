// dirty-log-iterations.csx — dirty_log_perf_test's loop, made to be looked at: how long each iteration and each
// KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG took, and where in the slot the dirty pages were.
//
//   virtlab run scripts/dirty-log-iterations.csx --plots plots/ -- --memory 1G --vcpus 2 --iterations 10 --write-percent 50
//   virtlab run scripts/dirty-log-iterations.csx --repeat 5 --warmup 1 --json before.json      (then: virtlab compare)
//
// Host memory is populated first (a live progress bar on a terminal), then the guest's dirty_log_perf workload runs
// --iterations passes with a sync point after each; there the host gets and clears the log (manual protect) and keeps
// the bitmap. --plots draws: stage times; per-pass and per-vCPU pass times; get/clear times and dirty pages per
// iteration; the dirty bitmaps as a heatmap (one row per iteration, page index across).

using System.Diagnostics;

var memory = Arg("memory", 256.MiB(), test: 16.MiB());
var vcpus = Arg("vcpus", 2);
var iterations = Arg("iterations", 8, test: 3);
var writePercent = Arg("write-percent", 50);
var random = Arg("random", true);
var backend = Arg("backend", Backend.Auto);

var vm = Stage("create VM", () => Vm.Create(new VmOptions(memory) { Vcpus = vcpus, Backend = backend, ManualProtect = true }));
var slot = vm.TestSlot;
Stage("populate host memory", () => vm.Memory.PopulateAll());
slot.LogDirtyPages = true;

var logs = new List<DirtyBitmap>();
var getUs = new List<double>();
var clearUs = new List<double>();
double Us(long from) => Stopwatch.GetElapsedTime(from).TotalMicroseconds;
var run = Stage("dirty memory", () => vm.Run(Workload.DirtyLogPerf(writePercent, random, iterations: iterations), pass =>
{
    var t = Stopwatch.GetTimestamp();
    var log = slot.GetDirtyLog();
    getUs.Add(Us(t));
    t = Stopwatch.GetTimestamp();
    slot.ClearDirtyLog(log);
    clearUs.Add(Us(t));
    logs.Add(log);
}, Cancellation));

Console.WriteLine(run);
Expect(logs.Count == iterations, $"one dirty log per iteration ({iterations})");
Expect(writePercent == 0 || logs.All(l => l.Count > 0), "every iteration dirtied pages");
Result("backend", vm.Backend.ToString());
Result("pages", slot.Pages);
Result("dirtyPages", logs.Select(l => l.Count).ToArray());
Result("getDirtyLogUs", getUs);
Result("clearDirtyLogUs", clearUs);
Result("run", run);
Plot("dirty pages by iteration", logs, logs.Select((_, i) => $"iteration {i}"));
vm.Dispose();
