// dirty-log-modes.csx — one guest workload, three ways of asking what it dirtied, and each answer must be
// exactly the set of pages the workload wrote (computed from the workload's own definition):
//   legacy   KVM_GET_DIRTY_LOG, which returns the bitmap and re-protects the slot;
//   manual   KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET only copies, KVM_CLEAR_DIRTY_LOG in 64-page chunks re-protects;
//   ring     KVM_CAP_DIRTY_LOG_RING: per-vCPU rings of kvm_dirty_gfn, harvested, then KVM_RESET_DIRTY_RINGS.
// The workload is dirty_log_perf_test's: random page order, --write-percent writes, --iterations passes.
//
//   ./virtlab run scripts/dirty-log-modes.csx -- --memory 256M --vcpus 2 --write-percent 30 --backend sim

var memory       = Arg("memory", 64.MiB(), test: 4.MiB());
var vcpus        = Arg("vcpus", 2);
var writePercent = Arg("write-percent", 50);
var iterations   = Arg("iterations", 2);
var seed         = Arg("seed", 7);
var chunk        = Arg("clear-chunk", 256.KiB());       // pages per KVM_CLEAR_DIRTY_LOG call = chunk / 4 KiB
var backend      = Arg("backend", Backend.Auto);

var work = Workload.DirtyLogPerf(writePercent, randomAccess: true, seed: (uint)seed, iterations: iterations);

DirtyBitmap Expected(Vm vm) => vm.Plan(work).ExpectedWrites()[vm.TestSlot.Id];

// legacy: get returns the dirty set once, then the slot is clean again.
{
    using var vm = Vm.Create(new VmOptions(memory) { Vcpus = vcpus, Backend = backend });
    vm.TestSlot.LogDirtyPages = true;
    Stage("legacy: dirty memory", () => vm.Run(work));
    var log = Stage("legacy: get dirty log", () => vm.TestSlot.GetDirtyLog());
    var expected = Expected(vm);
    Expect(log.Equals(expected), $"legacy GET reports exactly the {expected.Count} written pages (got {log.Count})");
    Expect(vm.TestSlot.GetDirtyLog().Count == 0, "legacy GET re-protected: a second GET with no writes is empty");
    Result("backend", vm.Backend.ToString());
    Result("dirtyPages", expected.Count);
}

// manual protect: get is idempotent until the bits are cleared, chunk by chunk.
{
    using var vm = Vm.Create(new VmOptions(memory) { Vcpus = vcpus, Backend = backend, ManualProtect = true });
    var slot = vm.TestSlot;
    slot.LogDirtyPages = true;
    Stage("manual: dirty memory", () => vm.Run(work));
    var log = Stage("manual: get dirty log", () => slot.GetDirtyLog());
    Expect(log.Equals(Expected(vm)), "manual GET reports exactly the written pages");
    Expect(slot.GetDirtyLog().Equals(log), "manual GET does not re-protect: a second GET reports the same pages");
    long pages = Math.Max(64, chunk.Pages4K / 64 * 64);   // KVM wants first_page and num_pages multiples of 64
    Stage("manual: clear dirty log", () =>
    {
        for (long first = 0; first < slot.Pages; first += pages)
        {
            slot.ClearDirtyLog(first, Math.Min(pages, slot.Pages - first), log);
            Count("ioctls");
        }
    });
    Expect(slot.GetDirtyLog().Count == 0, "after CLEAR over the whole slot, GET is empty");
}

// dirty ring: entries name (slot, page); harvesting them all gives the same set.
{
    using var vm = Vm.Create(new VmOptions(memory) { Vcpus = vcpus, Backend = backend, DirtyRingBytes = 64.KiB(), LogDirtyPages = true });
    var run = Stage("ring: dirty memory", () => vm.Run(work));
    var harvested = Stage("ring: harvest", () => vm.DirtyRing!.HarvestBitmaps());
    var fromRing = harvested.TryGetValue(vm.TestSlot.Id, out var b) ? b : new DirtyBitmap(vm.TestSlot.Pages);
    Expect(fromRing.Equals(Expected(vm)), $"the rings (with {run.DirtyRingFullExits} ring-full exits) report exactly the written pages");
    Stage("ring: reset", () => vm.DirtyRing!.Reset());
    Result("ringFullExits", run.DirtyRingFullExits);
}
