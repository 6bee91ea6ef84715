// kvm-page-table-test.csx — seed 000's kvm_page_table_test on real KVM (the simulator when /dev/kvm is absent):
// KVM_CREATE_MAPPINGS (logging off), KVM_UPDATE_MAPPINGS (logging on), KVM_ADJUST_MAPPINGS (logging off), all vCPUs
// released together at each stage; per stage the total and per-vCPU times and the KVM binary-stats deltas.
// Options as the selftest's: -b --memory, -p --phys-offset, -m --phys-bits, -s --backing, -v --vcpus.
//
//   ./virtlab run scripts/kvm-page-table-test.csx -- --memory 256M --backing anonymous_thp --vcpus 2

var memory   = Arg("memory", 1.GiB(), test: 8.MiB());            // -b
var backing  = Arg("backing", Backing.Anonymous);                 // -s: anonymous, anonymous_thp, anonymous_hugetlb[_2mb|_1gb], shmem, shared_hugetlb
var vcpus    = Arg("vcpus", 1);                                   // -v: even ids write, odd ids read
var offset   = Arg("phys-offset", "");                            // -p: guest-physical offset of the test slot (hex or decimal); empty = top of the space
var physBits = Arg("phys-bits", 0);                               // -m: guest physical address bits; 0 = the host's
var backend  = Arg("backend", Backend.Auto);

ulong? gpa = offset.Length == 0 ? null
    : offset.StartsWith("0x", StringComparison.OrdinalIgnoreCase) ? Convert.ToUInt64(offset[2..], 16) : ulong.Parse(offset);

var r = Stage("kvm_page_table_test", () => Mmu.PageTableTest(new PageTableTestOptions
{
    Memory = memory, Backing = backing, Vcpus = vcpus, PhysOffset = gpa, GuestPhysBits = physBits == 0 ? null : physBits, Backend = backend,
}, Cancellation));
Show(r);
Result("page_table_test", r);

// What each stage must have done, from the seed's guest code.
long pages = memory.Bytes / 4096, large = memory.Bytes / backing.PageSize(), writers = (vcpus + 1) / 2;
var create = r["KVM_CREATE_MAPPINGS"];
var update = r["KVM_UPDATE_MAPPINGS"];
var adjust = r["KVM_ADJUST_MAPPINGS"];
Expect(create.Writes == writers * large && create.Reads == (vcpus - writers) * large,
    $"KVM_CREATE_MAPPINGS: even vCPUs write and odd vCPUs read the first 8 bytes of each of the {large} backing pages");
long perLarge = backing.PageSize() / 4096;
long updateWrites = backing == Backing.Anonymous ? pages : large;
long updateReads = backing == Backing.Anonymous ? 0 : large * (perLarge - perLarge / 2);
Expect(update.Writes == vcpus * updateWrites && update.Reads == vcpus * updateReads,
    $"KVM_UPDATE_MAPPINGS: each vCPU writes {updateWrites} and reads {updateReads} pages");
Expect(adjust.Reads == vcpus * pages && adjust.Writes == 0, $"KVM_ADJUST_MAPPINGS: each vCPU reads all {pages} pages");
Expect(r.Stages.All(s => s.VcpuSeconds.Count == 0 || s.VcpuSeconds.Count == vcpus), "every stage has each vCPU's time");
if (r.Backend == "Kvm")
{
    Expect(r.StatsAvailable && r.Stages.All(s => s.StatDeltas!.ContainsKey("pages_4k") && s.StatDeltas.ContainsKey("remote_tlb_flush")),
        "each stage reports the KVM stats deltas of pages_4k / pages_2m / pages_1g and remote TLB flushes");
    Expect(r.PageSizeCountersMoved || r.PageSizeNote.Contains("not findings"), "page-size counters that did not move are said to be no finding");
}
