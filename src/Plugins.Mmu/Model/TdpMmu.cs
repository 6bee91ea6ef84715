using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Native;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Mmu;

/// <summary>How the model tracks dirty pages while a memslot logs (seed 001's two disciplines, the second with or without PML).</summary>
public enum DirtyTracking
{
    /// <summary>SPTEs without A/D bits: logging write-protects them (clear W); a write faults, the fast path restores W and marks the page dirty.</summary>
    WriteProtect,
    /// <summary>A/D bits: logging clears D on 4 KiB SPTEs (huge ones are write-protected); hardware sets D on a write; collecting scans D bits.</summary>
    AdBits,
    /// <summary>A/D bits plus Page-Modification Logging: setting D logs the GPA in a per-vCPU 512-entry buffer; a full buffer forces a VM exit that moves it into the dirty bitmap.</summary>
    Pml,
}

/// <summary>When huge mappings are broken up after logging starts (module parameter <c>eager_page_split</c>).</summary>
public enum SplitPolicy
{
    /// <summary>At enable (or, with INITIALLY_SET, at each clear): each huge SPTE becomes a fully populated table of smaller SPTEs.</summary>
    Eager,
    /// <summary>On the first write fault: the huge SPTE is zapped and only the faulting 4 KiB page is mapped; the rest refault one by one.</summary>
    Lazy,
}

/// <summary>Options of a <see cref="TdpMmu"/>.</summary>
public sealed record TdpMmuOptions
{
    public DirtyTracking Tracking { get; init; } = DirtyTracking.WriteProtect;
    public SplitPolicy Split { get; init; } = SplitPolicy.Eager;
    /// <summary>KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: GET copies, CLEAR re-protects.</summary>
    public bool ManualProtect { get; init; }
    /// <summary>KVM_DIRTY_LOG_INITIALLY_SET (needs <see cref="ManualProtect"/>).</summary>
    public bool InitiallySet { get; init; }
    public int Vcpus { get; init; } = 1;

    public void Validate()
    {
        if (Vcpus < 1 || Vcpus > VmOptions.MaxVcpusDefault)
            throw new ArgumentOutOfRangeException(nameof(Vcpus), $"vcpus must be 1 … {VmOptions.MaxVcpusDefault}; got {Vcpus}");
        if (InitiallySet && !ManualProtect)
            throw new ArgumentException("InitiallySet (KVM_DIRTY_LOG_INITIALLY_SET) only exists with ManualProtect; set both", nameof(InitiallySet));
        if (!Enum.IsDefined(Tracking)) throw new ArgumentOutOfRangeException(nameof(Tracking), Tracking, "WriteProtect, AdBits or Pml");
        if (!Enum.IsDefined(Split)) throw new ArgumentOutOfRangeException(nameof(Split), Split, "Eager or Lazy");
    }
}

/// <summary>A decoded leaf SPTE of the model.</summary>
public readonly record struct SpteInfo(int Level, bool Present, bool Writable, bool Accessed, bool Dirty, bool AdEnabled)
{
    public long PageBytes => 4096L << (9 * (Level - 1));
    public override string ToString() => !Present ? "not present"
        : $"{new Size(PageBytes)} SPTE: {(Writable ? "W" : "-")}{(Accessed ? "A" : "-")}{(Dirty ? "D" : "-")}{(AdEnabled ? "" : " (A/D disabled)")}";
}

/// <summary>One line of the TLB-flush account: how often an operation flushed, at which scope, how many pages in all.</summary>
public sealed record TlbFlushAccount(string Operation, string Scope, long Flushes, long Pages);

/// <summary>
/// A software model of KVM's x86 TDP MMU over a set of memslots: the 4-level tree of SPTEs, faults that map at the
/// largest level the backing and the memslot's alignment allow (4 KiB while logging), the dirty-logging operations of
/// seed 001 (<see cref="WrprotGfnRange"/>, <see cref="ClearDirtyGfnRange"/>, <see cref="ClearDirtyPtMasked"/>,
/// <see cref="SetDirtyGfnRange"/>, mark_page_dirty_in_slot), eager or lazy huge-page splitting, recovery of huge
/// mappings when logging stops (<see cref="ZapCollapsibleSptes"/>), per-vCPU PML buffers and TLB-flush accounting.
///
/// Representation: one byte per SPTE (present, writable, accessed, dirty, huge, A/D-enabled; the PFN is implied by the
/// memslot), in one flat array per level and memslot — the child table of entry i at level L is entries
/// [512·i, 512·i + 512) of level L−1 (in absolute gfn terms). So a sweep over 16 M 4 KiB SPTEs is a pass over 16 MiB.
/// The tree's shape is the kernel's: a present entry above level 1 is either a huge leaf or points to a table; entries
/// under a huge leaf or a non-present entry are always zero. Not thread-safe (the kernel's mmu_lock held throughout).
/// </summary>
public sealed class TdpMmu : IDisplayable
{
    internal const byte P = 1, W = 2, A = 4, D = 8, Huge = 16, Ad = 32;
    public const int PmlEntries = 512; // PML_LOG_NR_ENTRIES
    const int MaxHugeLevel = 3;        // KVM_MAX_HUGEPAGE_LEVEL (1 GiB)

    readonly List<ModelSlot> slots = [];
    readonly ulong[][] pml;
    readonly int[] pmlCount;
    readonly Dictionary<(string, string), (long Count, long Pages)> flushes = [];
    ModelSlot? lastSlot;
    string operation = "setup";
    internal long pages4k, pages2m, pages1g, pfTaken, pfFixed, pfFast, spteWrites, eagerSplits, lazySplits,
        collapsesOnFault, zappedCollapsible, pmlLogged, pmlFullExits, ptPages, remoteTlbFlush, markDirty, hwDirtyBitSets;

    public TdpMmu(TdpMmuOptions? options = null)
    {
        Options = options ?? new TdpMmuOptions();
        Options.Validate();
        pml = new ulong[Options.Vcpus][];
        for (int v = 0; v < pml.Length; v++) pml[v] = new ulong[PmlEntries];
        pmlCount = new int[Options.Vcpus];
        ptPages = 1; // the root
    }

    /// <summary>A model of <paramref name="vm"/>'s memslots (ids, gpas, sizes, backings, logging flags), its vCPUs and its dirty-log mode.</summary>
    public static TdpMmu For(Vm vm, DirtyTracking tracking = DirtyTracking.WriteProtect, SplitPolicy split = SplitPolicy.Eager)
    {
        ArgumentNullException.ThrowIfNull(vm);
        var m = new TdpMmu(new TdpMmuOptions
        {
            Tracking = tracking, Split = split, ManualProtect = vm.ManualProtect, InitiallySet = vm.InitiallySet, Vcpus = vm.Vcpus,
        });
        foreach (var s in vm.Slots) m.AddSlot(s.Id, s.Gpa, s.Size, s.Backing, s.LogDirtyPages);
        return m;
    }

    public TdpMmuOptions Options { get; }

    public IReadOnlyList<ModelSlot> Slots => slots;

    public ModelSlot Slot(int id) => slots.FirstOrDefault(s => s.Id == id)
        ?? throw new ArgumentException($"the model has no memslot {id}; it has {string.Join(", ", slots.Select(s => s.Id))}", nameof(id));

    /// <summary>KVM_SET_USER_MEMORY_REGION for the model: a new memslot (EINVAL/EEXIST rules as KVM).</summary>
    public ModelSlot AddSlot(int id, ulong gpa, Size size, Backing backing = Backing.Anonymous, bool logDirtyPages = false)
    {
        if (id < 0 || id >= 32764) throw new ArgumentOutOfRangeException(nameof(id), $"memslot ids are 0 … 32763; got {id} (EINVAL)");
        if (size.Bytes <= 0 || size.Bytes % 4096 != 0 || gpa % 4096 != 0)
            throw new ArgumentException($"memslot gpa 0x{gpa:x} and size {size} must be 4 KiB aligned and the size positive (EINVAL)", nameof(size));
        if (size.Bytes % backing.PageSize() != 0)
            throw new ArgumentException($"memslot size {size} is not a multiple of the {backing.Name()} page size {new Size(backing.PageSize())} (EINVAL)", nameof(size));
        if ((UInt128)gpa + (ulong)size.Bytes > (UInt128)1 << 52)
            throw new ArgumentOutOfRangeException(nameof(gpa), $"memslot [0x{gpa:x}, +{size}) passes the 52-bit guest-physical limit (EINVAL)");
        if (slots.Any(s => s.Id == id)) throw new ArgumentException($"memslot {id} already exists (EEXIST)", nameof(id));
        var end = gpa + (ulong)size.Bytes;
        if (slots.FirstOrDefault(s => gpa < s.EndGpa && s.Gpa < end) is { } o)
            throw new ArgumentException($"memslot [0x{gpa:x}, 0x{end:x}) overlaps memslot {o.Id} [0x{o.Gpa:x}, 0x{o.EndGpa:x}) (EEXIST)", nameof(gpa));
        var slot = new ModelSlot(id, gpa, size.Bytes, backing);
        slots.Add(slot);
        slots.Sort((a, b) => a.Gpa.CompareTo(b.Gpa));
        if (logDirtyPages) SetLogDirtyPages(id, true);
        return slot;
    }

    // ---- counters ---------------------------------------------------------------------------------

    /// <summary>Counters, named as KVM's statistics where both exist (pages_4k, pages_2m, pages_1g, remote_tlb_flush, pf_taken, pf_fixed, pf_fast).</summary>
    public IReadOnlyDictionary<string, long> Counters => new Dictionary<string, long>
    {
        ["pages_4k"] = pages4k, ["pages_2m"] = pages2m, ["pages_1g"] = pages1g,
        ["remote_tlb_flush"] = remoteTlbFlush, ["remote_tlb_flush_requests"] = remoteTlbFlush,
        ["pf_taken"] = pfTaken, ["pf_fixed"] = pfFixed, ["pf_fast"] = pfFast,
        ["spte_writes"] = spteWrites, ["page_table_pages"] = ptPages,
        ["huge_splits_eager"] = eagerSplits, ["huge_zaps_on_fault"] = lazySplits, ["huge_collapses_on_fault"] = collapsesOnFault,
        ["zapped_collapsible"] = zappedCollapsible, ["mark_page_dirty"] = markDirty, ["dirty_bits_set"] = hwDirtyBitSets,
        ["pml_logged"] = pmlLogged, ["pml_full_exits"] = pmlFullExits,
    };

    public long this[string counter] => Counters.TryGetValue(counter, out var v) ? v
        : throw new KeyNotFoundException($"no model counter '{counter}'; counters: {string.Join(", ", Counters.Keys)}");

    /// <summary>TLB flushes by operation and scope (memslot, range, whole VM), with their count and pages covered.</summary>
    public IReadOnlyList<TlbFlushAccount> TlbFlushes => flushes.Select(kv => new TlbFlushAccount(kv.Key.Item1, kv.Key.Item2, kv.Value.Count, kv.Value.Pages)).ToArray();

    /// <summary>Bytes the model holds: SPTE arrays, dirty bitmaps, PML buffers.</summary>
    public long MemoryBytes => slots.Sum(s => s.MemoryBytes) + pml.Length * (long)PmlEntries * 8;

    /// <summary>Entries in vCPU <paramref name="vcpu"/>'s PML buffer, not yet moved to the dirty bitmap.</summary>
    public int PmlBuffered(int vcpu) => pmlCount[vcpu];

    void Flush(string scope, long pages)
    {
        remoteTlbFlush++;
        var key = (operation, scope);
        flushes[key] = flushes.TryGetValue(key, out var c) ? (c.Count + 1, c.Pages + pages) : (1, pages);
    }

    void FlushMemslot(ModelSlot s) => Flush($"memslot {s.Id}", s.Pages);

    // ---- guest accesses ---------------------------------------------------------------------------

    /// <summary>One 8-byte guest access by vCPU <paramref name="vcpu"/>: a TLB/page-walk hit, a hardware D-bit set (and PML log), or a TDP fault.</summary>
    public void Access(int vcpu, ulong gpa, bool write)
    {
        if ((uint)vcpu >= (uint)pml.Length) throw new ArgumentOutOfRangeException(nameof(vcpu), $"vCPU {vcpu} does not exist; the model has {pml.Length}");
        var s = lastSlot;
        if (s is null || gpa - s.Gpa >= (ulong)s.Bytes)
        {
            s = FindSlot(gpa) ?? throw new ArgumentOutOfRangeException(nameof(gpa),
                $"gpa 0x{gpa:x} is in no memslot (KVM exits to userspace with KVM_EXIT_MMIO); slots: {string.Join("; ", slots)}");
            lastSlot = s;
        }
        ulong gfn = gpa >> 12;
        int level = 1;
        long idx = (long)(gfn - s.Base[1]);
        byte e = s.L[1][idx];
        if ((e & P) == 0)
        {
            // A huge leaf above? Entries under it are zero.
            for (level = 2; level <= MaxHugeLevel; level++)
            {
                idx = (long)((gfn >> (9 * (level - 1))) - s.Base[level]);
                e = s.L[level][idx];
                if ((e & P) == 0 || (e & Huge) != 0) break;
            }
            if (level > MaxHugeLevel || (e & (P | Huge)) != (P | Huge)) { Fault(vcpu, s, gfn, write); return; }
        }
        if (!write)
        {
            if ((e & (Ad | A)) == Ad) s.L[level][idx] = (byte)(e | A); // hardware sets the accessed bit
            return;
        }
        if ((e & W) == 0)
        {
            if (level == 1) { FastPageFault(s, idx, e, gfn); return; } // a 4 KiB leaf: always the fast path
            Fault(vcpu, s, gfn, write);
            return;
        }
        if ((e & (Ad | D)) == Ad)
        {
            s.L[level][idx] = (byte)(e | D | A); // hardware sets the dirty bit ...
            hwDirtyBitSets++;
            if (Options.Tracking == DirtyTracking.Pml && s.Logging) PmlLog(vcpu, gfn); // ... and, with PML on, logs the GPA
        }
    }

    /// <summary>Runs a planned workload's accesses (the same <see cref="WorkloadPlan.Cursor"/> sequences both VM backends run), pass by pass.</summary>
    public void Run(WorkloadPlan plan, Action<int>? afterPass = null, int passes = -1)
    {
        ArgumentNullException.ThrowIfNull(plan);
        if (plan.Vcpus > pml.Length) throw new ArgumentException($"the plan has {plan.Vcpus} vCPUs; the model {pml.Length}", nameof(plan));
        if (passes < 0) passes = plan.Workload.Passes;
        var cursors = Enumerable.Range(0, plan.Vcpus).Select(plan.Cursor).ToArray();
        for (int p = 0; p < passes; p++)
        {
            operation = "guest access";
            for (int v = 0; v < cursors.Length; v++)
            {
                ref var c = ref cursors[v]; // a struct: advance the stored cursor, not a copy
                c.BeginPass();
                while (c.Next(out var gpa, out var write)) Access(v, gpa, write);
            }
            afterPass?.Invoke(p);
        }
    }

    /// <summary>Runs a recorded trace of (vCPU, gpa, write) accesses.</summary>
    public void Run(IEnumerable<(int Vcpu, ulong Gpa, bool Write)> trace)
    {
        ArgumentNullException.ThrowIfNull(trace);
        operation = "guest access";
        foreach (var (v, g, w) in trace) Access(v, g, w);
    }

    ModelSlot? FindSlot(ulong gpa)
    {
        foreach (var s in slots) if (gpa - s.Gpa < (ulong)s.Bytes) return s;
        return null;
    }

    void PmlLog(int vcpu, ulong gfn)
    {
        // The CPU logs only while the PML index is in range; with 512 entries logged the next log forces a PML-full exit first.
        if (pmlCount[vcpu] == PmlEntries)
        {
            pmlFullExits++;
            FlushPml(vcpu);
        }
        pml[vcpu][pmlCount[vcpu]++] = gfn << 12;
        pmlLogged++;
    }

    /// <summary>vmx_flush_pml_buffers: every logged GPA to mark_page_dirty.</summary>
    void FlushPml(int vcpu)
    {
        for (int i = 0; i < pmlCount[vcpu]; i++)
        {
            var gpa = pml[vcpu][i];
            if (FindSlot(gpa) is { } s) MarkPageDirty(s, gpa >> 12);
        }
        pmlCount[vcpu] = 0;
    }

    void MarkPageDirty(ModelSlot s, ulong gfn)
    {
        if (s.Bitmap is { } b) { b.Set((long)(gfn - s.BaseGfn)); markDirty++; }
    }

    /// <summary>kvm_tdp_mmu_page_fault: the fast path (restore W on a write-protected leaf) or a map at the goal level.</summary>
    void Fault(int vcpu, ModelSlot s, ulong gfn, bool write)
    {
        int goal = MaxMappingLevel(s, gfn);
        var (leafLevel, leafIdx) = FindLeaf(s, gfn);
        if (leafLevel > 0 && write && leafLevel <= goal)
        {
            if (leafLevel == 1) { FastPageFault(s, leafIdx, s.L[1][leafIdx], gfn); return; }
            // A write-protected huge leaf that may stay huge (logging is off): the fast path too.
            byte e = s.L[leafLevel][leafIdx];
            s.L[leafLevel][leafIdx] = (byte)(e | W | ((e & Ad) != 0 ? D | A : 0));
            spteWrites++; pfTaken++; pfFast++; pfFixed++;
            return;
        }
        pfTaken++;
        // kvm_tdp_mmu_map: walk down to the goal level, zapping a huge leaf in the way and linking empty tables.
        for (int level = 4; level > goal; level--)
        {
            long i = (long)((gfn >> (9 * (level - 1))) - s.Base[level]);
            byte e = s.L[level][i];
            if ((e & (P | Huge)) == (P | Huge))
            {
                ZapSubtree(s, level, i);
                lazySplits++;
                var op = operation; operation = "fault: zap huge SPTE"; Flush("range", 1L << (9 * (level - 1))); operation = op;
                e = 0;
            }
            if ((e & P) == 0)
            {
                s.L[level][i] = P | W | A; // a non-leaf SPTE pointing to a new, empty table
                spteWrites++;
                ptPages++;
            }
        }
        long gi = (long)((gfn >> (9 * (goal - 1))) - s.Base[goal]);
        byte old = s.L[goal][gi];
        if ((old & P) != 0 && (goal == 1 || (old & Huge) != 0))
        {
            // A leaf at the goal level that did not need the fast path (a read of a present page): spurious.
            return;
        }
        if ((old & P) != 0)
        {
            // A table where a huge leaf may now go (logging stopped): replace it, free the table, flush its range.
            ZapSubtree(s, goal, gi);
            collapsesOnFault++;
            var op = operation; operation = "fault: collapse table into huge SPTE"; Flush("range", 1L << (9 * (goal - 1))); operation = op;
        }
        // make_spte: host-writable memory is mapped writable even on a read fault; a writable SPTE in a logging memslot
        // marks its page dirty at once. With A/D bits on, a writable SPTE is created dirty.
        byte spte = P | A | W;
        if (goal > 1) spte |= Huge;
        if (Options.Tracking != DirtyTracking.WriteProtect) spte |= Ad | D;
        s.L[goal][gi] = spte;
        spteWrites++;
        pfFixed++;
        AddPages(goal, 1);
        if (s.Logging) MarkPageDirty(s, gfn);
    }

    /// <summary>fast_page_fault on a present, write-protected 4 KiB SPTE: make it writable (and dirty with A/D bits); no TLB
    /// flush is needed for a permission increase. handle_changed_spte_dirty_log: W 0 → 1 at 4 KiB marks the page dirty.</summary>
    void FastPageFault(ModelSlot s, long i, byte e, ulong gfn)
    {
        s.L[1][i] = (byte)(e | W | ((e & Ad) != 0 ? D | A : 0));
        spteWrites++;
        pfTaken++;
        pfFast++;
        pfFixed++;
        if (s.Logging) MarkPageDirty(s, gfn);
    }

    (int Level, long Index) FindLeaf(ModelSlot s, ulong gfn)
    {
        long i1 = (long)(gfn - s.Base[1]);
        if ((s.L[1][i1] & P) != 0) return (1, i1);
        for (int level = 2; level <= MaxHugeLevel; level++)
        {
            long i = (long)((gfn >> (9 * (level - 1))) - s.Base[level]);
            byte e = s.L[level][i];
            if ((e & P) == 0) return (0, 0);
            if ((e & Huge) != 0) return (level, i);
        }
        return (0, 0);
    }

    /// <summary>kvm_mmu_max_mapping_level: 4 KiB while the slot logs; else the largest level the backing provides whose
    /// whole range lies in the memslot with gfn and host address equally aligned.</summary>
    internal static int MaxMappingLevel(ModelSlot s, ulong gfn)
    {
        if (s.Logging) return 1;
        for (int level = s.BackingLevel; level > 1; level--)
        {
            ulong n = 1UL << (9 * (level - 1));
            ulong first = gfn & ~(n - 1);
            if (s.BaseGfn % n == 0 && first >= s.BaseGfn && first + n <= s.BaseGfn + (ulong)s.Pages) return level;
        }
        return 1;
    }

    void AddPages(int level, long n)
    {
        switch (level)
        {
            case 1: pages4k += n; break;
            case 2: pages2m += n; break;
            default: pages1g += n; break;
        }
    }

    /// <summary>Clears entry <paramref name="i"/> at <paramref name="level"/> and everything under it (handle_removed_pt).</summary>
    void ZapSubtree(ModelSlot s, int level, long i)
    {
        byte e = s.L[level][i];
        if ((e & P) == 0) return;
        s.L[level][i] = 0;
        spteWrites++;
        if (level == 1 || (e & Huge) != 0) { AddPages(level, -1); return; }
        ptPages--;
        long child = ChildIndex(s, level, i);
        int below = level - 1;
        var table = s.L[below];
        long lo = Math.Max(0, child), hi = Math.Min(table.Length, child + 512);
        if (below == 1)
        {
            long n = 0;
            for (long c = lo; c < hi; c++) if ((table[c] & P) != 0) n++;
            Array.Clear(table, (int)lo, (int)(hi - lo));
            spteWrites += n;
            pages4k -= n;
        }
        else
            for (long c = lo; c < hi; c++) ZapSubtree(s, below, c);
    }

    static long ChildIndex(ModelSlot s, int level, long i) => (long)(((ulong)i + s.Base[level]) << 9) - (long)s.Base[level - 1];

    // ---- memslot flags ----------------------------------------------------------------------------

    /// <summary>
    /// KVM_MEM_LOG_DIRTY_PAGES on or off (kvm_mmu_slot_apply_flags). On: a dirty bitmap (all ones with INITIALLY_SET, and
    /// then nothing else); eager split if chosen; write-protect every leaf (write protection) or clear D on 4 KiB leaves
    /// and write-protect huge ones (A/D, PML). Off: the bitmap goes, and collapsible tables are zapped.
    /// </summary>
    public void SetLogDirtyPages(int slotId, bool on)
    {
        var s = Slot(slotId);
        if (s.Logging == on) return;
        if (on)
        {
            operation = "enable dirty logging";
            s.Bitmap = new DirtyBitmap(s.Pages);
            s.Logging = true;
            if (Options.InitiallySet) { s.Bitmap.SetAll(); return; }
            if (Options.Split == SplitPolicy.Eager) TrySplitHugePages(s, s.BaseGfn, s.BaseGfn + (ulong)s.Pages);
            bool flush;
            if (Options.Tracking == DirtyTracking.WriteProtect) flush = WrprotGfnRange(s.BaseGfn, s.BaseGfn + (ulong)s.Pages, 1);
            else
            {
                flush = ClearDirtyGfnRange(s.BaseGfn, s.BaseGfn + (ulong)s.Pages);
                flush |= WrprotGfnRange(s.BaseGfn, s.BaseGfn + (ulong)s.Pages, 2);
            }
            if (flush) FlushMemslot(s);
        }
        else
        {
            operation = "disable dirty logging";
            for (int v = 0; v < pml.Length; v++) FlushPml(v);
            s.Logging = false;
            s.Bitmap = null;
            ZapCollapsibleSptes(slotId);
        }
    }

    // ---- dirty log ----------------------------------------------------------------------------------

    /// <summary>
    /// KVM_GET_DIRTY_LOG. PML buffers are flushed first (kvm_arch_sync_dirty_log); with A/D bits and no PML the D bits
    /// of 4 KiB leaves are gathered. Without manual protect the bitmap is taken (each word exchanged with 0) and the
    /// reported pages re-protected (clear_dirty_pt_masked per word), then one flush.
    /// </summary>
    public DirtyBitmap GetDirtyLog(int slotId)
    {
        var s = Slot(slotId);
        var bitmap = s.Bitmap ?? throw new InvalidOperationException($"KVM_GET_DIRTY_LOG: model slot {slotId} is not logging (ENOENT)");
        operation = "get dirty log";
        for (int v = 0; v < pml.Length; v++) FlushPml(v);
        if (Options.Tracking == DirtyTracking.AdBits) GatherDirtyBits(s);
        if (Options.ManualProtect) return bitmap.Clone();
        var result = new DirtyBitmap(s.Pages);
        var words = bitmap.Words;
        bool flush = false;
        for (int w = 0; w < words.Length; w++)
        {
            ulong m = words[w];
            if (m == 0) continue;
            words[w] = 0;
            result.Words[w] = m;
            flush |= ClearDirtyPtMasked(s, s.BaseGfn + (ulong)w * 64, m, Options.Tracking == DirtyTracking.WriteProtect);
        }
        if (flush) FlushMemslot(s);
        return result;
    }

    /// <summary>
    /// KVM_CLEAR_DIRTY_LOG over pages [<paramref name="firstPage"/>, +<paramref name="numPages"/>): clears and re-protects
    /// the pages set both in the log and in <paramref name="mask"/> (a bitmap of the whole slot; null = all). EINVAL rules as KVM.
    /// </summary>
    public void ClearDirtyLog(int slotId, long firstPage, long numPages, DirtyBitmap? mask = null)
    {
        var s = Slot(slotId);
        if (!Options.ManualProtect) throw new InvalidOperationException("KVM_CLEAR_DIRTY_LOG needs manual protect (EINVAL)");
        var bitmap = s.Bitmap ?? throw new InvalidOperationException($"KVM_CLEAR_DIRTY_LOG: model slot {slotId} is not logging (ENOENT)");
        if (firstPage < 0 || numPages < 0 || firstPage % 64 != 0 || (numPages % 64 != 0 && firstPage + numPages != s.Pages) || firstPage + numPages > s.Pages)
            throw new ArgumentException($"KVM_CLEAR_DIRTY_LOG: first_page {firstPage}, num_pages {numPages} on a slot of {s.Pages} pages: both must be multiples of 64 " +
                                        "(num_pages may end at the slot's end) and inside the slot (EINVAL)", nameof(firstPage));
        if (mask is not null && mask.Pages != s.Pages) throw new ArgumentException($"the mask has {mask.Pages} pages; slot {slotId} has {s.Pages}", nameof(mask));
        operation = "clear dirty log";
        bool flush = false;
        var words = bitmap.Words;
        for (long p = firstPage; p < firstPage + numPages; p += 64)
        {
            int w = (int)(p >> 6);
            ulong m = mask?.Words[w] ?? ulong.MaxValue;
            if (firstPage + numPages - p < 64) m &= (1UL << (int)(firstPage + numPages - p)) - 1;
            m &= words[w];
            if (m == 0) continue;
            words[w] &= ~m;
            ulong gfn = s.BaseGfn + (ulong)p;
            if (Options.InitiallySet)
            {
                // Huge mappings were left alone at enable: split them (eager) or write-protect them where the mask begins and ends.
                ulong start = gfn + (ulong)BitOperations.TrailingZeroCount(m), end = gfn + 63 - (ulong)BitOperations.LeadingZeroCount(m);
                if (Options.Split == SplitPolicy.Eager) TrySplitHugePages(s, start, end + 1);
                flush |= WrprotGfnRange(start, start + 1, 2);
                flush |= WrprotGfnRange(end, end + 1, 2);
            }
            flush |= ClearDirtyPtMasked(s, gfn, m, Options.Tracking == DirtyTracking.WriteProtect);
        }
        if (flush) FlushMemslot(s);
    }

    void GatherDirtyBits(ModelSlot s)
    {
        var t = s.L[1];
        var b = s.Bitmap!;
        for (long i = 0; i < s.Pages; i++)
            if ((t[i] & (P | D)) == (P | D)) b.Set(i);
    }

    // ---- seed 001's operations ----------------------------------------------------------------------

    /// <summary>
    /// wrprot_gfn_range: clear W on every present leaf SPTE of level ≥ <paramref name="minLevel"/> mapping gfns
    /// [<paramref name="start"/>, <paramref name="end"/>). True when an SPTE changed (the caller must flush).
    /// </summary>
    public bool WrprotGfnRange(ulong start, ulong end, int minLevel)
    {
        if (minLevel is < 1 or > MaxHugeLevel)
            throw new ArgumentOutOfRangeException(nameof(minLevel), $"min_level must be 1 (4 KiB) … {MaxHugeLevel} (1 GiB, KVM_MAX_HUGEPAGE_LEVEL); got {minLevel}");
        long changed = 0;
        foreach (var s in SlotsIn(start, end, out var lo, out var hi))
        {
            for (int level = MaxHugeLevel; level >= minLevel; level--)
            {
                var (a, b) = LevelRange(s, level, lo(s), hi(s));
                changed += level == 1 ? ClearBitVectorized(s.L[1], a, b, W, P | W) : ClearLeafBit(s.L[level], a, b, W);
            }
        }
        spteWrites += changed;
        return changed > 0;
    }

    /// <summary>
    /// clear_dirty_gfn_range: for each present leaf in [start, end): with A/D bits disabled in the SPTE, clear W; else clear D.
    /// </summary>
    public bool ClearDirtyGfnRange(ulong start, ulong end)
    {
        long changed = 0;
        foreach (var s in SlotsIn(start, end, out var lo, out var hi))
            for (int level = MaxHugeLevel; level >= 1; level--)
            {
                var (a, b) = LevelRange(s, level, lo(s), hi(s));
                var t = s.L[level];
                for (long i = a; i < b; i++)
                {
                    byte e = t[i];
                    if ((e & P) == 0 || (level > 1 && (e & Huge) == 0)) continue;
                    byte bit = (e & Ad) == 0 ? W : D;
                    if ((e & bit) == 0) continue;
                    t[i] = (byte)(e & ~bit);
                    changed++;
                }
            }
        spteWrites += changed;
        return changed > 0;
    }

    /// <summary>
    /// clear_dirty_pt_masked: for each bit of <paramref name="mask"/> (bit i = gfn + i), the 4 KiB leaf only: clear W when
    /// <paramref name="wrprot"/> or the SPTE has A/D disabled, else clear D. Huge leaves and unmasked gfns are untouched.
    /// </summary>
    public bool ClearDirtyPtMasked(ulong gfn, ulong mask, bool wrprot)
    {
        if (mask == 0) return false;
        var s = FindSlot((gfn + (ulong)BitOperations.TrailingZeroCount(mask)) << 12)
            ?? throw new ArgumentOutOfRangeException(nameof(gfn), $"gfn 0x{gfn:x} is in no memslot");
        return ClearDirtyPtMasked(s, gfn, mask, wrprot);
    }

    bool ClearDirtyPtMasked(ModelSlot s, ulong gfn, ulong mask, bool wrprot)
    {
        long changed = 0;
        long first = (long)(gfn - s.Base[1]);
        if (mask == ulong.MaxValue && first >= 0 && first + 64 <= s.Pages)
        {
            // A full word: 64 SPTEs side by side, two vector passes (W where A/D is off or wrprot, D where A/D is on).
            var t1 = s.L[1];
            if (wrprot) changed = ClearBitVectorized(t1, first, first + 64, W, P | W, P | W);
            else
            {
                changed = ClearBitVectorized(t1, first, first + 64, W, P | W | Ad, P | W);
                changed += ClearBitVectorized(t1, first, first + 64, D, P | D | Ad, P | D | Ad);
            }
            spteWrites += changed;
            return changed > 0;
        }
        var t = s.L[1];
        while (mask != 0)
        {
            int bit = BitOperations.TrailingZeroCount(mask);
            mask &= mask - 1;
            ulong g = gfn + (ulong)bit;
            if (g - s.BaseGfn >= (ulong)s.Pages)
                throw new ArgumentOutOfRangeException(nameof(mask), $"mask bit {bit} (gfn 0x{g:x}) is outside memslot {s.Id}; the memslot must contain every masked gfn");
            long i = (long)(g - s.Base[1]);
            byte e = t[i];
            if ((e & P) == 0) continue;
            byte clear = wrprot || (e & Ad) == 0 ? W : D;
            if ((e & clear) == 0) continue;
            t[i] = (byte)(e & ~clear);
            changed++;
        }
        spteWrites += changed;
        return changed > 0;
    }

    /// <summary>set_dirty_gfn_range (PML): set D on every present leaf with A/D bits in [start, end).</summary>
    public bool SetDirtyGfnRange(ulong start, ulong end)
    {
        long changed = 0;
        foreach (var s in SlotsIn(start, end, out var lo, out var hi))
            for (int level = MaxHugeLevel; level >= 1; level--)
            {
                var (a, b) = LevelRange(s, level, lo(s), hi(s));
                var t = s.L[level];
                for (long i = a; i < b; i++)
                {
                    byte e = t[i];
                    if ((e & (P | Ad | D)) != (P | Ad) || (level > 1 && (e & Huge) == 0)) continue;
                    t[i] = (byte)(e | D);
                    changed++;
                }
            }
        spteWrites += changed;
        return changed > 0;
    }

    /// <summary>
    /// kvm_mmu_zap_collapsible_sptes: every table (level 2 … KVM_MAX_HUGEPAGE_LEVEL) whose range may now be mapped huge is
    /// zapped, so the next access refaults a huge SPTE. Returns the tables zapped; flushes the memslot if any.
    /// </summary>
    public long ZapCollapsibleSptes(int slotId)
    {
        var s = Slot(slotId);
        var op = operation;
        operation = "zap collapsible SPTEs";
        long zapped = 0;
        for (int level = MaxHugeLevel; level >= 2; level--)
        {
            var t = s.L[level];
            for (long i = 0; i < t.Length; i++)
            {
                byte e = t[i];
                if ((e & P) == 0 || (e & Huge) != 0) continue;
                ulong gfn = ((ulong)i + s.Base[level]) << (9 * (level - 1));
                if (gfn < s.BaseGfn || MaxMappingLevel(s, gfn) < level) continue;
                ZapSubtree(s, level, i);
                zapped++;
            }
        }
        zappedCollapsible += zapped;
        if (zapped > 0) FlushMemslot(s);
        operation = op;
        return zapped;
    }

    /// <summary>
    /// Eager split (tdp_mmu_split_huge_pages_root, target 4 KiB): each huge leaf in [start, end) becomes a table of 512
    /// leaves one level down with the same bits, top-down until 4 KiB. No TLB flush: both translations agree.
    /// </summary>
    public long TrySplitHugePages(ModelSlot s, ulong start, ulong end)
    {
        long split = 0;
        for (int level = MaxHugeLevel; level >= 2; level--)
        {
            var (a, b) = LevelRange(s, level, Math.Max(start, s.BaseGfn), Math.Min(end, s.BaseGfn + (ulong)s.Pages));
            var t = s.L[level];
            for (long i = a; i < b; i++)
            {
                byte e = t[i];
                if ((e & (P | Huge)) != (P | Huge)) continue;
                byte child = (byte)(level - 1 == 1 ? e & ~Huge : e);
                long c = ChildIndex(s, level, i);
                s.L[level - 1].AsSpan((int)c, 512).Fill(child);
                t[i] = (byte)(P | W | A);
                AddPages(level, -1);
                AddPages(level - 1, 512);
                ptPages++;
                spteWrites += 513;
                split++;
            }
        }
        eagerSplits += split;
        return split;
    }

    // ---- helpers --------------------------------------------------------------------------------------

    delegate ulong Bound(ModelSlot s);

    IEnumerable<ModelSlot> SlotsIn(ulong start, ulong end, out Bound lo, out Bound hi)
    {
        if (end < start) throw new ArgumentException($"gfn range [0x{start:x}, 0x{end:x}) ends before it starts");
        lo = s => Math.Max(start, s.BaseGfn);
        hi = s => Math.Min(end, s.BaseGfn + (ulong)s.Pages);
        return slots.Where(s => start < s.BaseGfn + (ulong)s.Pages && s.BaseGfn < end).ToArray();
    }

    /// <summary>Indexes [a, b) at <paramref name="level"/> of the entries that map gfns [lo, hi) of slot s.</summary>
    static (long, long) LevelRange(ModelSlot s, int level, ulong lo, ulong hi)
    {
        if (hi <= lo) return (0, 0);
        int shift = 9 * (level - 1);
        return ((long)((lo >> shift) - s.Base[level]), (long)(((hi - 1) >> shift) - s.Base[level] + 1));
    }

    static long ClearLeafBit(byte[] t, long a, long b, byte bit)
    {
        long n = 0;
        for (long i = a; i < b; i++)
        {
            byte e = t[i];
            if ((e & (P | Huge)) == (P | Huge) && (e & bit) != 0) { t[i] = (byte)(e & ~bit); n++; }
        }
        return n;
    }

    /// <summary>Clears <paramref name="bit"/> in every entry of t[a, b) where all of <paramref name="when"/> are set; returns how many. 32 entries a step.</summary>
    static long ClearBitVectorized(byte[] t, long a, long b, byte bit, byte when) => ClearBitVectorized(t, a, b, bit, when, when);

    /// <summary>Clears <paramref name="bit"/> in every entry e of t[a, b) with (e &amp; <paramref name="mask"/>) == <paramref name="want"/>; returns how many.</summary>
    static long ClearBitVectorized(byte[] t, long a, long b, byte bit, byte mask, byte want)
    {
        long n = 0, i = a;
        ref byte r = ref t[0];
        if (Vector256.IsHardwareAccelerated)
        {
            var maskV = Vector256.Create(mask);
            var wantV = Vector256.Create(want);
            var keep = Vector256.Create((byte)~bit);
            for (; i + 32 <= b; i += 32)
            {
                var v = Vector256.LoadUnsafe(ref r, (nuint)i);
                var hit = Vector256.Equals(v & maskV, wantV);
                uint bits = hit.ExtractMostSignificantBits();
                if (bits == 0) continue;
                n += BitOperations.PopCount(bits);
                (v & (keep | ~hit)).StoreUnsafe(ref r, (nuint)i);
            }
        }
        for (; i < b; i++)
        {
            byte e = t[i];
            if ((e & mask) == want) { t[i] = (byte)(e & ~bit); n++; }
        }
        return n;
    }

    public SpteInfo Spte(ulong gpa)
    {
        var s = FindSlot(gpa) ?? throw new ArgumentOutOfRangeException(nameof(gpa), $"gpa 0x{gpa:x} is in no memslot");
        var (level, i) = FindLeaf(s, gpa >> 12);
        if (level == 0) return new SpteInfo(0, false, false, false, false, false);
        byte e = s.L[level][i];
        return new SpteInfo(level, true, (e & W) != 0, (e & A) != 0, (e & D) != 0, (e & Ad) != 0);
    }

    public IRenderable ToRenderable()
    {
        var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape(ToString()));
        t.AddColumn("counter").AddColumn(new TableColumn("value").RightAligned());
        foreach (var (k, v) in Counters) t.AddRow(k, v.ToString("N0"));
        var f = new Table().Border(TableBorder.Rounded).Title("TLB flushes").AddColumn("operation").AddColumn("scope")
            .AddColumn(new TableColumn("flushes").RightAligned()).AddColumn(new TableColumn("pages").RightAligned());
        foreach (var a in TlbFlushes) f.AddRow(Markup.Escape(a.Operation), Markup.Escape(a.Scope), a.Flushes.ToString("N0"), a.Pages.ToString("N0"));
        return new Rows(t, f);
    }

    public override string ToString() =>
        $"TDP MMU model: {Options.Tracking}, {Options.Split} split{(Options.ManualProtect ? Options.InitiallySet ? ", manual protect + initially set" : ", manual protect" : "")}, " +
        $"{slots.Count} memslot(s), {pml.Length} vCPU(s), {new Size(MemoryBytes)}";
}

/// <summary>A memslot of the model, with its SPTE arrays (one per level) and, while logging, its dirty bitmap.</summary>
public sealed class ModelSlot
{
    internal readonly byte[][] L = new byte[5][];   // L[1] … L[4]
    internal readonly ulong[] Base = new ulong[5];  // gfn >> 9(level−1) of the slot's first gfn, per level

    internal ModelSlot(int id, ulong gpa, long bytes, Backing backing)
    {
        Id = id; Gpa = gpa; Bytes = bytes; Backing = backing;
        BackingLevel = backing.PageSize() switch { >= 1L << 30 => 3, >= 2L << 20 => 2, _ => 1 };
        ulong first = BaseGfn, last = BaseGfn + (ulong)Pages - 1;
        for (int level = 1; level <= 4; level++)
        {
            int shift = 9 * (level - 1);
            Base[level] = first >> shift;
            L[level] = new byte[checked((int)((last >> shift) - Base[level] + 1))];
        }
    }

    public int Id { get; }
    public ulong Gpa { get; }
    public long Bytes { get; }
    public ulong EndGpa => Gpa + (ulong)Bytes;
    public ulong BaseGfn => Gpa >> 12;
    public long Pages => Bytes >> 12;
    public Backing Backing { get; }
    /// <summary>The largest level the backing provides: 1 (4 KiB), 2 (2 MiB) or 3 (1 GiB).</summary>
    public int BackingLevel { get; }
    public bool Logging { get; internal set; }
    /// <summary>The memslot's dirty_bitmap while logging; null otherwise.</summary>
    public DirtyBitmap? Bitmap { get; internal set; }
    public long MemoryBytes => L.Sum(a => (long)(a?.Length ?? 0)) + (Bitmap?.SizeInBytes ?? 0);
    public override string ToString() => $"slot {Id}: [0x{Gpa:x}, 0x{EndGpa:x}) {new Size(Bytes)} {Backing.Name()}{(Logging ? " log-dirty" : "")}";
}
