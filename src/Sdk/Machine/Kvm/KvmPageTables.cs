using System.Diagnostics;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// Layout of the backend's system memslot 0 (guest-physical 0, identity-mapped). Like the selftests' slot 0
/// it holds the GDT, guest code, a data area (strings, per-vCPU records), per-vCPU stacks, and — in
/// whatever the slot has left — the pool of page-table pages.
/// </summary>
internal sealed class SystemLayout
{
    public const ulong PageSize = 4096;
    public const ulong GdtGpa = 0x1000;
    public const ulong CodeGpa = 0x10000;
    public const ulong CodeSize = 256 << 10;
    public const ulong DataGpa = CodeGpa + CodeSize;
    public const ulong DataSize = 256 << 10;
    /// <summary>Per-vCPU records (workload parameters and counters) live in the upper half of the data area.</summary>
    public const ulong RecordsGpa = DataGpa + DataSize / 2;
    public const ulong RecordSize = 128;
    public const ulong StackGpa = DataGpa + DataSize;
    public const ulong StackSize = 16 << 10;   // per vCPU
    public const ulong MinPoolPages = 64;
    public const int MaxRecords = (int)(DataSize / 2 / RecordSize);

    public ulong Size { get; }
    public int Vcpus { get; }
    public ulong PoolGpa { get; }
    public ulong PoolPages { get; }

    public SystemLayout(ulong size, int vcpus)
    {
        // KvmVm.Build checks both (SystemMemory against MinSize, the vCPU count against MaxRecords).
        Debug.Assert(size >= MinSize(vcpus), $"system slot 0 of {size >> 10} KiB is smaller than {MinSize(vcpus) >> 10} KiB");
        Debug.Assert(vcpus <= MaxRecords, $"{vcpus} vCPUs do not fit the record area");
        Size = size;
        Vcpus = vcpus;
        PoolGpa = StackGpa + (ulong)vcpus * StackSize;
        PoolPages = (size - PoolGpa) / PageSize;
    }

    public static ulong MinSize(int vcpus) => StackGpa + (ulong)vcpus * StackSize + MinPoolPages * PageSize;

    public static ulong StackTop(int vcpu) => StackGpa + (ulong)(vcpu + 1) * StackSize - 16;
    public static ulong Record(int vcpu) => RecordsGpa + (ulong)vcpu * RecordSize;
    public static ulong AlignUp(ulong v, ulong a) => (v + a - 1) & ~(a - 1);

    // GDT selectors written by WriteGdt.
    public const ushort CodeSelector = 0x08, DataSelector = 0x10;
}

/// <summary>One guest-physical range to map, and where in the guest-virtual space it appears.</summary>
internal readonly record struct GuestMapping(ulong Gpa, ulong Gva, ulong Size);

/// <summary>
/// Writes 4-level page tables into fresh pages of the system slot's pool. Pages a guest has used are
/// never rewritten: with shadow paging KVM write-protects guest page tables only against guest writes,
/// so host-side edits of a live table would leave stale shadow pages. Each build takes new pages; when
/// the pool runs out, the caller re-creates the system memslot (which zaps its shadow pages) and resets it.
/// </summary>
// Unsafe as a whole: every member writes page-table entries through raw pointers into the system slot, all of them
// inside the slot's pool (indices are bounded by the layout; the pool's exhaustion is checked before a page is taken).
internal sealed unsafe class KvmPageTables
{
    private const ulong Present = 1, Writable = 2, PageSizeBit = 1 << 7;
    private const ulong AddrMask = 0x000F_FFFF_FFFF_F000;
    private readonly byte* _slotHost;
    private readonly SystemLayout _layout;
    private ulong _next; // next free pool page index

    public KvmPageTables(byte* systemSlotHost, SystemLayout layout)
    {
        _slotHost = systemSlotHost;
        _layout = layout;
    }

    public bool Use1GPages { get; set; }

    /// <summary>Pool pages still free.</summary>
    public ulong FreePages => _layout.PoolPages - _next;

    public void ResetPool() => _next = 0;

    /// <summary>Upper bound of table pages needed for these mappings.</summary>
    public static ulong PagesNeeded(IEnumerable<GuestMapping> maps)
    {
        ulong n = 1;
        foreach (var m in maps)
        {
            // one PDPT per 512 GiB, one PD per GiB, up to two PTs for unaligned ends, plus slack
            n += (m.Size >> 39) + 1 + (m.Size >> 30) + 1 + 2 + 2;
        }
        return n;
    }

    /// <summary>Build tables for the mappings; returns the PML4's guest-physical address (the new CR3).</summary>
    public ulong Build(IReadOnlyList<GuestMapping> maps)
    {
        ulong pml4 = Alloc();
        foreach (var m in maps)
        {
            ulong gpa = m.Gpa, gva = m.Gva, end = m.Gpa + m.Size;
            while (gpa < end)
            {
                ulong left = end - gpa;
                if (Use1GPages && Aligned(gpa, gva, 1ul << 30) && left >= 1ul << 30)
                {
                    Map(pml4, gva, gpa, 1);
                    gpa += 1ul << 30; gva += 1ul << 30;
                }
                else if (Aligned(gpa, gva, 2ul << 20) && left >= 2ul << 20)
                {
                    Map(pml4, gva, gpa, 2);
                    gpa += 2ul << 20; gva += 2ul << 20;
                }
                else
                {
                    Map(pml4, gva, gpa, 3);
                    gpa += 4096; gva += 4096;
                }
            }
        }
        return pml4;
    }

    private static bool Aligned(ulong gpa, ulong gva, ulong size) => ((gpa | gva) & (size - 1)) == 0;

    // leafLevel: 1 = PDPT entry maps 1 GiB, 2 = PD entry maps 2 MiB, 3 = PT entry maps 4 KiB.
    private void Map(ulong pml4, ulong gva, ulong gpa, int leafLevel)
    {
        ulong table = pml4;
        for (int level = 0; level < leafLevel; level++)
        {
            int shift = 39 - 9 * level;
            ulong* e = Entry(table, (gva >> shift) & 511);
            if ((*e & Present) == 0) *e = Alloc() | Present | Writable;
            else if ((*e & PageSizeBit) != 0) throw new InvalidOperationException($"guest mapping overlap at gva 0x{gva:x}");
            table = *e & AddrMask;
        }
        int leafShift = 39 - 9 * leafLevel;
        ulong* leaf = Entry(table, (gva >> leafShift) & 511);
        *leaf = gpa | Present | Writable | (leafLevel < 3 ? PageSizeBit : 0);
    }

    private ulong* Entry(ulong tableGpa, ulong index) => (ulong*)(_slotHost + tableGpa) + index;

    private ulong Alloc()
    {
        if (_next >= _layout.PoolPages)
            throw new InvalidOperationException($"the guest page-table pool ({_layout.PoolPages} pages of system slot 0) is exhausted; give the VM a larger SystemMemory");
        ulong gpa = _layout.PoolGpa + _next++ * SystemLayout.PageSize;
        new Span<byte>(_slotHost + gpa, (int)SystemLayout.PageSize).Clear();
        return gpa;
    }

    /// <summary>Flat GDT: null, 64-bit code (L=1), data. The sregs below mirror it in the segment caches.</summary>
    public void WriteGdt()
    {
        var gdt = (ulong*)(_slotHost + SystemLayout.GdtGpa);
        gdt[0] = 0;
        gdt[1] = 0x00AF_9B00_0000_FFFF; // present, DPL0, code exec/read accessed, L=1, G=1
        gdt[2] = 0x00CF_9300_0000_FFFF; // present, DPL0, data read/write accessed, D/B=1, G=1
    }

    /// <summary>Long mode without a guest OS: paging on, PAE, EFER.LME|LMA, 64-bit CS, flat data segments.</summary>
    public static void SetLongMode(ref kvm_sregs s, ulong cr3)
    {
        const ulong CR0_PE = 1, CR0_MP = 1 << 1, CR0_ET = 1 << 4, CR0_NE = 1 << 5, CR0_WP = 1 << 16, CR0_AM = 1 << 18, CR0_PG = 1ul << 31;
        const ulong CR4_PAE = 1 << 5, CR4_OSFXSR = 1 << 9, CR4_OSXMMEXCPT = 1 << 10;
        const ulong EFER_SCE = 1, EFER_LME = 1 << 8, EFER_LMA = 1 << 10, EFER_NX = 1 << 11;
        _ = EFER_SCE; _ = CR0_AM; _ = EFER_NX;

        s.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG;
        s.cr3 = cr3;
        s.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
        s.efer = EFER_LME | EFER_LMA;

        var code = new kvm_segment
        {
            @base = 0, limit = 0xFFFF_FFFF, selector = SystemLayout.CodeSelector,
            type = 0xB, present = 1, dpl = 0, db = 0, s = 1, l = 1, g = 1,
        };
        var data = new kvm_segment
        {
            @base = 0, limit = 0xFFFF_FFFF, selector = SystemLayout.DataSelector,
            type = 0x3, present = 1, dpl = 0, db = 1, s = 1, l = 0, g = 1,
        };
        s.cs = code;
        s.ds = s.es = s.fs = s.gs = s.ss = data;
        s.gdt.@base = SystemLayout.GdtGpa;
        s.gdt.limit = 3 * 8 - 1;
        // A busy 64-bit TSS is required for VM entry on VMX; no IDT: any exception becomes a triple fault.
        s.tr = new kvm_segment { @base = 0, limit = 0x67, selector = 0x18, type = 0xB, present = 1, s = 0, g = 0 };
        s.ldt = new kvm_segment { unusable = 1 };
        s.idt.@base = 0;
        s.idt.limit = 0;
    }
}
