// tdp-mmu-model.csx — seed 001 made visible: the TDP MMU model runs one dirty_log_perf_test workload under write
// protection, A/D bits and PML, each with eager and lazy huge-page splitting, and shows side by side what each costs
// (SPTE writes, faults, splits, PML-full exits, TLB flushes, time) and the mappings per size after each phase.
// Every iteration's dirty set of every model must equal the plan's — and the real VM's, which runs the same workload.
//
//   ./virtlab run scripts/tdp-mmu-model.csx -- --memory 256M --backing anonymous_thp --vcpus 2 --write-percent 50

using System.Diagnostics;

var memory     = Arg("memory", 256.MiB(), test: 16.MiB());
var vcpus      = Arg("vcpus", 2);
var backing    = Arg("backing", Backing.AnonymousThp);
var iterations = Arg("iterations", 2);
var writes     = Arg("write-percent", 100);
var random     = Arg("random", false);
var seed       = Arg("seed", 1);
var manual     = Arg("manual-protect", true);
var compareVm  = Arg("compare-vm", true);          // also run the workload on the VM and compare dirty sets
var backend    = Arg("backend", Backend.Auto);

var vm = Vm.Create(new VmOptions(memory) { Vcpus = vcpus, Backing = backing, Backend = backend, ManualProtect = manual });
var slot = vm.TestSlot;
var populate = vm.Plan(Workload.DirtyLogPerfPopulate());
var work = vm.Plan(Workload.DirtyLogPerf(writes, random, (uint)seed, iterations: iterations));
var adjust = vm.Plan(Workload.Read());
Console.WriteLine($"{vm}; workload: populate, then {iterations} × {work.Workload}; then read every page after logging stops");

// What the plan writes in each pass (the same cursors the VM and the model run).
var expect = new PassExpectation(work);
var planned = Enumerable.Range(0, iterations).Select(_ => expect.NextPass()[slot.Id]).ToList();

// The real VM, when asked: its dirty log per iteration.
var vmSets = new List<DirtyBitmap>();
if (compareVm)
{
    Stage($"{vm.Backend} VM", () =>
    {
        vm.Run(Workload.DirtyLogPerfPopulate());
        slot.LogDirtyPages = true;
        vm.Run(Workload.DirtyLogPerf(writes, random, (uint)seed, iterations: iterations), afterPass: _ =>
        {
            var b = slot.GetDirtyLog();
            if (manual) slot.ClearDirtyLog(b);
            vmSets.Add(b);
        });
        slot.LogDirtyPages = false;
    });
    for (int i = 0; i < iterations; i++)
        Expect(vmSets[i].Equals(planned[i]), $"{vm.Backend} VM: iteration {i + 1} logged exactly the {planned[i].Count} planned pages (got {vmSets[i].Count})");
}

string[] shown = ["spte_writes", "pf_taken", "pf_fast", "huge_splits_eager", "huge_zaps_on_fault", "zapped_collapsible",
                  "mark_page_dirty", "pml_logged", "pml_full_exits", "remote_tlb_flush", "page_table_pages"];
var columns = new List<(string Name, Dictionary<string, string> Rows)>();
var dirtyByConfig = new Dictionary<string, List<DirtyBitmap>>();
foreach (var tracking in Enum.GetValues<DirtyTracking>())
foreach (var split in Enum.GetValues<SplitPolicy>())
{
    var name = $"{tracking}/{split}";
    var m = Mmu.Model(vm, tracking, split);
    var rows = new Dictionary<string, string>();
    var sets = new List<DirtyBitmap>();
    string Pages() => $"{m["pages_4k"]:N0} / {m["pages_2m"]:N0} / {m["pages_1g"]:N0}";
    var sw = Stopwatch.StartNew();
    m.Run(populate);
    rows["4K/2M/1G after populate"] = Pages();
    m.SetLogDirtyPages(slot.Id, true);
    rows["4K/2M/1G after enable"] = Pages();
    m.Run(work, afterPass: _ =>
    {
        var b = m.GetDirtyLog(slot.Id);
        if (manual) m.ClearDirtyLog(slot.Id, 0, slot.Pages, b);
        sets.Add(b);
    });
    rows["4K/2M/1G while logging"] = Pages();
    m.SetLogDirtyPages(slot.Id, false);
    m.Run(adjust);
    rows["4K/2M/1G after re-read"] = Pages();
    sw.Stop();
    foreach (var c in shown) rows[c] = m[c].ToString("N0");
    rows["TLB flushes by operation"] = string.Join("; ", m.TlbFlushes.Select(f => $"{f.Operation} {f.Flushes}"));
    rows["model time ms"] = sw.Elapsed.TotalMilliseconds.ToString("0.0");
    rows["model memory"] = new Size(m.MemoryBytes).ToString();
    columns.Add((name, rows));
    dirtyByConfig[name] = sets;
    for (int i = 0; i < iterations; i++)
    {
        Expect(sets[i].Equals(planned[i]) || (writes < 100 && split == SplitPolicy.Lazy && backing != Backing.Anonymous),
            $"model {name}: iteration {i + 1} dirty set equals the plan's {planned[i].Count} pages (got {sets[i].Count})");
        if (compareVm) Expect(sets[i].Equals(vmSets[i]) || (writes < 100 && split == SplitPolicy.Lazy && backing != Backing.Anonymous),
            $"model {name}: iteration {i + 1} dirty set equals the {vm.Backend} VM's");
    }
    Result($"model_{tracking}_{split}", rows);
}

// Side by side.
var rowNames = columns[0].Rows.Keys.ToList();
int w0 = rowNames.Max(r => r.Length), wc = Math.Max(14, columns.Max(c => Math.Max(c.Name.Length, c.Rows.Values.Where(v => v.Length < 40).Max(v => v.Length))));
Console.WriteLine();
Console.WriteLine("".PadRight(w0) + "  " + string.Join("  ", columns.Select(c => c.Name.PadLeft(wc))));
foreach (var r in rowNames.Where(r => r != "TLB flushes by operation"))
    Console.WriteLine(r.PadRight(w0) + "  " + string.Join("  ", columns.Select(c => c.Rows[r].PadLeft(wc))));
Console.WriteLine();
foreach (var c in columns) Console.WriteLine($"{c.Name,-22} TLB flushes: {c.Rows["TLB flushes by operation"]}");

// Lazy and eager agree on what is dirty when every access writes; with reads, a lazily zapped huge page refaults on
// reads too, and KVM maps host-writable memory writable (and so dirty) even on a read fault.
foreach (var t in Enum.GetValues<DirtyTracking>())
{
    var e = dirtyByConfig[$"{t}/Eager"]; var l = dirtyByConfig[$"{t}/Lazy"];
    bool same = e.Zip(l).All(p => p.First.Equals(p.Second));
    if (writes == 100 || backing == Backing.Anonymous) Expect(same, $"{t}: eager and lazy splitting give the same dirty sets");
    else Console.WriteLine($"{t}: lazy split reports {l.Sum(b => b.Count) - e.Sum(b => b.Count)} more dirty pages than eager (read faults after a zap map writable pages)");
}
vm.Dispose();
