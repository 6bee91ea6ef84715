using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Mmu;

/// <summary>How the stage-2 fault handler turns a table of 4 KiB pages back into a block after dirty logging stops.</summary>
public enum CoalescePolicy
{
    /// <summary>The bug seed 000 reproduces: clear the table entry, invalidate the TLB by the block's IPA only (one address), install the block.
    /// 4 KiB entries for the rest of the block stay cached next to the new block entry.</summary>
    InvalidateByIpa,
    /// <summary>The fix: break-before-make — clear the table entry, invalidate every TLB entry of the VMID, then install the block.</summary>
    BreakBeforeMake,
}

/// <summary>A stage-2 TLB entry: a 4 KiB page or a block, read-only or writable.</summary>
public readonly record struct Stage2TlbEntry(ulong Ipa, long Size, bool Writable)
{
    public override string ToString() => $"{(Size == 4096 ? "4 KiB page" : new Size(Size) + " block")} at IPA 0x{Ipa:x} ({(Writable ? "RW" : "RO")})";
}

/// <summary>A TLB conflict abort: more than one TLB entry translates <see cref="Ipa"/>.</summary>
public sealed record TlbConflict(string Stage, ulong Ipa, IReadOnlyList<Stage2TlbEntry> Entries)
{
    public override string ToString() => $"TLB conflict abort in {Stage} at IPA 0x{Ipa:x}: {string.Join(" and ", Entries)}";
}

/// <summary>
/// An ARM-style stage-2 MMU over one memslot backed by blocks (THP or hugetlb): block or table-of-pages per block-sized
/// region, and a TLB that caches what walks find (entries stay until invalidated; real TLBs also evict, so this is the
/// worst case). With dirty logging on, a write to a block dissolves it (break, TLBI by IPA, map 4 KiB pages on
/// demand); with logging off, a fault in a table region coalesces it back into a block under <see cref="Policy"/>.
/// Any lookup that matches two TLB entries is a TLB conflict abort, recorded with its address and entries.
/// </summary>
public sealed class Stage2Mmu : IDisplayable
{
    const byte Invalid = 0, Block = 1, Table = 2;
    const byte PageNone = 0, PageRo = 1, PageRw = 2;

    readonly byte[] kind;        // per block region
    readonly bool[] blockWritable;
    readonly byte[]?[] pages;    // per table region: 4 KiB page permissions
    readonly Dictionary<ulong, Stage2TlbEntry> tlbPages = [], tlbBlocks = [];
    readonly List<TlbConflict> conflicts = [];
    string stage = "setup";
    long faults, blockMaps, pageMaps, dissolves, coalesces, tlbiIpa, tlbiVmid, conflictCount;

    public Stage2Mmu(ulong ipa, Size size, CoalescePolicy policy, Size? blockSize = null)
    {
        BlockSize = (blockSize ?? new Size(2L << 20)).Bytes;
        if (BlockSize is not ((2L << 20) or (1L << 30)))
            throw new ArgumentOutOfRangeException(nameof(blockSize), $"stage-2 blocks with a 4 KiB granule are 2 MiB (level 2) or 1 GiB (level 1); got {new Size(BlockSize)}");
        if (size.Bytes <= 0 || size.Bytes % BlockSize != 0 || ipa % (ulong)BlockSize != 0)
            throw new ArgumentException($"the memslot [0x{ipa:x}, +{size}) must be a positive number of {new Size(BlockSize)} blocks, block aligned", nameof(size));
        if (!Enum.IsDefined(policy)) throw new ArgumentOutOfRangeException(nameof(policy), policy, "InvalidateByIpa or BreakBeforeMake");
        Ipa = ipa; Bytes = size.Bytes; Policy = policy;
        long blocks = Bytes / BlockSize;
        kind = new byte[blocks];
        blockWritable = new bool[blocks];
        pages = new byte[blocks][];
    }

    public ulong Ipa { get; }
    public long Bytes { get; }
    public long BlockSize { get; }
    public CoalescePolicy Policy { get; }
    public bool Logging { get; private set; }
    int PagesPerBlock => (int)(BlockSize >> 12);

    public IReadOnlyList<TlbConflict> Conflicts => conflicts;
    /// <summary>All conflict aborts (<see cref="Conflicts"/> keeps the first 64).</summary>
    public long ConflictCount => conflictCount;
    public int TlbEntries => tlbPages.Count + tlbBlocks.Count;

    public IReadOnlyDictionary<string, long> Counters => new Dictionary<string, long>
    {
        ["stage2_faults"] = faults, ["block_maps"] = blockMaps, ["page_maps"] = pageMaps, ["block_dissolves"] = dissolves,
        ["table_coalesces"] = coalesces, ["tlbi_ipa"] = tlbiIpa, ["tlbi_vmid"] = tlbiVmid, ["tlb_conflict_aborts"] = conflictCount,
    };

    /// <summary>Names the phase that later conflicts are attributed to.</summary>
    public void BeginStage(string name) => stage = name ?? throw new ArgumentNullException(nameof(name));

    /// <summary>KVM_MEM_LOG_DIRTY_PAGES: on write-protects every mapping and invalidates the VMID; off changes no mapping (tables coalesce on fault).</summary>
    public void SetLogging(bool on)
    {
        if (on && !Logging)
        {
            Array.Fill(blockWritable, false);
            foreach (var p in pages) if (p is not null) for (int i = 0; i < p.Length; i++) if (p[i] == PageRw) p[i] = PageRo;
            TlbiVmid();
        }
        Logging = on;
    }

    /// <summary>One guest access at <paramref name="ipa"/>: TLB lookup (a double match aborts), walk and fill, or a stage-2 fault and retry.</summary>
    public void Access(ulong ipa, bool write)
    {
        if (ipa - Ipa >= (ulong)Bytes) throw new ArgumentOutOfRangeException(nameof(ipa), $"IPA 0x{ipa:x} is outside the memslot [0x{Ipa:x}, 0x{Ipa + (ulong)Bytes:x})");
        for (int attempt = 0; attempt < 4; attempt++)
        {
            ulong pageKey = ipa >> 12, blockKey = (ipa - Ipa) / (ulong)BlockSize;
            bool hasPage = tlbPages.TryGetValue(pageKey, out var pe), hasBlock = tlbBlocks.TryGetValue(blockKey, out var be);
            if (hasPage && hasBlock)
            {
                conflictCount++;
                if (conflicts.Count < 64) conflicts.Add(new TlbConflict(stage, ipa, [pe, be]));
                TlbiIpa(ipa); // the abort's handler invalidates the address before anything else can run
                return;
            }
            if (hasPage || hasBlock)
            {
                var e = hasPage ? pe : be;
                if (write && !e.Writable) { Fault(ipa, write); continue; }
                return;
            }
            // Walk.
            int b = (int)blockKey;
            if (kind[b] == Block)
            {
                tlbBlocks[blockKey] = new Stage2TlbEntry(Ipa + blockKey * (ulong)BlockSize, BlockSize, blockWritable[b]);
                continue;
            }
            if (kind[b] == Table && pages[b]![PageIndex(ipa)] is var p && p != PageNone)
            {
                tlbPages[pageKey] = new Stage2TlbEntry(pageKey << 12, 4096, p == PageRw);
                continue;
            }
            Fault(ipa, write);
        }
    }

    int PageIndex(ulong ipa) => (int)(((ipa - Ipa) % (ulong)BlockSize) >> 12);

    void Fault(ulong ipa, bool write)
    {
        faults++;
        int b = (int)((ipa - Ipa) / (ulong)BlockSize);
        ulong blockIpa = Ipa + (ulong)b * (ulong)BlockSize;
        if (Logging)
        {
            if (kind[b] == Block)
            {
                if (!write) return; // a read of a write-protected block is no fault
                // Dissolve the block: break, invalidate it, and map 4 KiB pages from now on.
                kind[b] = Table;
                pages[b] = new byte[PagesPerBlock];
                dissolves++;
                TlbiIpa(blockIpa);
            }
            if (kind[b] == Invalid) { kind[b] = Table; pages[b] = new byte[PagesPerBlock]; }
            var p = pages[b]!;
            int i = PageIndex(ipa);
            if (p[i] == PageNone) pageMaps++;
            if (p[i] == PageRo && write) TlbiIpa(ipa & ~4095UL); // permission relaxed: drop the stale RO entry
            p[i] = Math.Max(p[i], write ? PageRw : PageRo);
            return;
        }
        if (kind[b] == Block)
        {
            // Write to a block left read-only by logging: make it writable.
            blockWritable[b] = true;
            TlbiIpa(blockIpa);
            return;
        }
        if (kind[b] == Table)
        {
            var p = pages[b]!;
            int i = PageIndex(ipa);
            if (p[i] == PageRo && write) { p[i] = PageRw; TlbiIpa(ipa & ~4095UL); return; }
            // A missing page in a table while logging is off: coalesce the table into a block.
            coalesces++;
            kind[b] = Invalid;
            pages[b] = null;
            if (Policy == CoalescePolicy.BreakBeforeMake) TlbiVmid(); // every 4 KiB entry of the old table goes
            else TlbiIpa(blockIpa);                                   // only the entries for the block's first address go
        }
        kind[b] = Block;
        blockWritable[b] = true;
        blockMaps++;
    }

    void TlbiIpa(ulong ipa)
    {
        tlbiIpa++;
        tlbPages.Remove(ipa >> 12);
        var bk = (ipa - Ipa) / (ulong)BlockSize;
        if (tlbBlocks.TryGetValue(bk, out var e) && ipa - e.Ipa < (ulong)e.Size) tlbBlocks.Remove(bk);
    }

    void TlbiVmid()
    {
        tlbiVmid++;
        tlbPages.Clear();
        tlbBlocks.Clear();
    }

    /// <summary>
    /// Seed 000's sequence on this memslot: KVM_CREATE_MAPPINGS (touch each block), logging on, KVM_UPDATE_MAPPINGS (write the
    /// first page of each block, read its upper half page by page), logging off, KVM_ADJUST_MAPPINGS (read every page).
    /// </summary>
    public Stage2Mmu RunPageTableTest()
    {
        int per = PagesPerBlock, half = per / 2;
        long blocks = Bytes / BlockSize;
        BeginStage("KVM_CREATE_MAPPINGS");
        for (long b = 0; b < blocks; b++) Access(Ipa + (ulong)(b * BlockSize), write: true);
        SetLogging(true);
        BeginStage("KVM_UPDATE_MAPPINGS");
        for (long b = 0; b < blocks; b++)
        {
            ulong at = Ipa + (ulong)(b * BlockSize);
            Access(at, write: true);
            for (int j = half; j < per; j++) Access(at + (ulong)j * 4096, write: false);
        }
        SetLogging(false);
        BeginStage("KVM_ADJUST_MAPPINGS");
        for (long p = 0; p < Bytes >> 12; p++) Access(Ipa + (ulong)p * 4096, write: false);
        return this;
    }

    public IRenderable ToRenderable()
    {
        var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape(ToString())).AddColumn("counter").AddColumn(new TableColumn("value").RightAligned());
        foreach (var (k, v) in Counters) t.AddRow(k, v.ToString("N0"));
        var rows = new List<IRenderable> { t };
        foreach (var c in conflicts.Take(8)) rows.Add(new Text(c.ToString()));
        if (conflictCount > 8) rows.Add(new Text($"… {conflictCount - 8} more"));
        if (conflictCount == 0) rows.Add(new Text("no TLB conflict abort"));
        return new Rows(rows);
    }

    public override string ToString() =>
        $"stage-2 MMU ({Policy}): [0x{Ipa:x}, +{new Size(Bytes)}) in {new Size(BlockSize)} blocks, {TlbEntries} TLB entries, {conflictCount} TLB conflict abort(s)";
}
