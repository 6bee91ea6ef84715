// quickstart.csx — a short tour: compose a VM, run guest work on its vCPUs, watch the dirty log.
// Runs on real KVM when /dev/kvm works (memslots, vCPU threads running generated x86-64, the kernel's
// own dirty bitmap), and on the simulator elsewhere — same API, same dirty-logging semantics.
//
//   ./virtlab run scripts/quickstart.csx -- --memory 256M --vcpus 4 --backing anonymous_thp
//   ./virtlab run scripts/quickstart.csx --json run.json -- --backend sim

var memory  = Arg("memory", 64.MiB(), test: 8.MiB());
var vcpus   = Arg("vcpus", 2);
var backing = Arg("backing", Backing.Anonymous);
var backend = Arg("backend", Backend.Auto);

var vm = Stage("create VM", () => Vm.Create(memory, vcpus, backing, backend));   // (scripts cannot `using var` at top level)
Show(vm);                                       // backend, memslots, vCPUs
var slot = vm.TestSlot;                         // slot 1, at the top of the guest-physical space

// 1. Populate: the vCPUs split the test slot and write each 4 KiB page once (dirty logging off).
var populate = Stage("populate", () => vm.Run(Workload.Write()));
Show(populate);
Expect(populate.Writes == slot.Pages, $"populate writes each of the slot's {slot.Pages} pages once");

// 2. Dirty logging on (KVM_MEM_LOG_DIRTY_PAGES), then write every other page and read all of them.
Stage("enable dirty logging", () => slot.LogDirtyPages = true);
Stage("write every other page", () => vm.Run(Workload.Write(stride: 8192)));
Stage("read every page", () => vm.Run(Workload.Read()));
var dirty = Stage("get dirty log", () => slot.GetDirtyLog());   // KVM_GET_DIRTY_LOG: returns and re-protects
Expect(dirty.Count == slot.Pages / 2, $"exactly the {slot.Pages / 2} written pages are dirty (reads dirty nothing)");
Expect(dirty.SetPages.All(p => p % 2 == 0), "only even pages are dirty");

// 3. The legacy GET re-protected the slot: with no writes since, the next log is empty.
Expect(slot.GetDirtyLog().Count == 0, "a second GET_DIRTY_LOG with no writes in between is empty");
Stage("disable dirty logging", () => slot.LogDirtyPages = false);

Result("backend", vm.Backend.ToString());
Result("pages", slot.Pages);
Result("dirtyPages", dirty.Count);
Result("residentBytes", vm.Memory.ResidentBytes);
vm.Dispose();
