// tlb-conflict.csx — seed 000's TLB-conflict bug on an ARM-style stage-2 model. kvm_page_table_test's stages on a
// block-backed memslot: blocks mapped, logging on (blocks dissolve into 4 KiB pages on write, pages map on demand),
// logging off, every page read — the fault handler coalesces each table back into a block. Invalidating the TLB only
// by the block's address (the bug) leaves the old 4 KiB entries cached beside the new block entry: two entries
// translate one address, a TLB conflict abort. Break-before-make (invalidate everything, then install) has none.
//
//   ./virtlab run scripts/tlb-conflict.csx -- --memory 64M --block 2M

var memory = Arg("memory", 64.MiB(), test: 8.MiB());
var block  = Arg("block", 2.MiB());

var buggy = Stage("invalidate by IPA (the bug)", () => Mmu.Stage2(memory, CoalescePolicy.InvalidateByIpa, blockSize: block).RunPageTableTest());
Show(buggy);
var fixedMmu = Stage("break-before-make (the fix)", () => Mmu.Stage2(memory, CoalescePolicy.BreakBeforeMake, blockSize: block).RunPageTableTest());
Show(fixedMmu);

long blocks = memory.Bytes / block.Bytes;
Expect(buggy.ConflictCount == blocks, $"the buggy policy aborts once per coalesced block ({blocks}); got {buggy.ConflictCount}");
Expect(buggy.Conflicts.All(c => c.Stage == "KVM_ADJUST_MAPPINGS" && c.Entries.Count == 2 && c.Entries.Any(e => e.Size == 4096) && c.Entries.Any(e => e.Size == block.Bytes)),
    "each abort is in KVM_ADJUST_MAPPINGS and names one stale 4 KiB entry and the new block entry");
if (buggy.Conflicts.Count > 0) Console.WriteLine($"first: {buggy.Conflicts[0]}");
Expect(fixedMmu.ConflictCount == 0, "break-before-make: no TLB conflict abort");
Expect(buggy.Counters["table_coalesces"] == blocks && fixedMmu.Counters["table_coalesces"] == blocks, "both policies coalesce every table back into a block");
Result("conflicts_invalidate_by_ipa", buggy.ConflictCount);
Result("conflicts_break_before_make", fixedMmu.ConflictCount);
Result("first_conflict", buggy.Conflicts.FirstOrDefault()?.ToString());
