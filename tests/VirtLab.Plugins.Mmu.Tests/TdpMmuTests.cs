using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Plugins.Mmu.Tests;

/// <summary>The TDP MMU model against kernel semantics (seed 001 and the x86 MMU around it).</summary>
public class TdpMmuTests
{
    const ulong Gpa = 0x1_0000_0000; // 4 GiB: 1 GiB aligned
    const long Page = 4096, Huge = 2L << 20;

    static TdpMmu Model(Backing backing, DirtyTracking tracking = DirtyTracking.WriteProtect, SplitPolicy split = SplitPolicy.Eager,
        long size = 8L << 20, bool manual = false)
    {
        var m = new TdpMmu(new TdpMmuOptions { Tracking = tracking, Split = split, ManualProtect = manual, Vcpus = 2 });
        m.AddSlot(1, Gpa, new Size(size), backing);
        return m;
    }

    static void WriteAll(TdpMmu m, long size, long stride = Page)
    {
        for (long o = 0; o < size; o += stride) m.Access(0, Gpa + (ulong)o, write: true);
    }

    [Fact]
    public void Faults_map_at_the_largest_level_the_backing_and_alignment_allow()
    {
        var thp = Model(Backing.AnonymousThp);
        WriteAll(thp, 8L << 20, Huge);
        Assert.Equal(4, thp["pages_2m"]);
        Assert.Equal(0, thp["pages_4k"]);
        Assert.Equal(2, thp.Spte(Gpa + 5 * Page).Level);

        var anon = Model(Backing.Anonymous);
        WriteAll(anon, 8L << 20, Huge);
        Assert.Equal(4, anon["pages_4k"]);
        Assert.Equal(0, anon["pages_2m"]);

        // A slot that is not 2 MiB aligned cannot hold 2 MiB mappings however it is backed.
        var odd = new TdpMmu();
        odd.AddSlot(1, Gpa + Page * 16, new Size(8L << 20), Backing.AnonymousThp);
        odd.Access(0, Gpa + Huge, write: false);
        Assert.Equal(1, odd.Spte(Gpa + Huge).Level);

        var giga = new TdpMmu();
        giga.AddSlot(1, Gpa, new Size(1L << 30), Backing.AnonymousHugetlb1G);
        giga.Access(0, Gpa + 12345 * 8, write: true);
        Assert.Equal(1, giga["pages_1g"]);
    }

    [Fact]
    public void After_logging_starts_on_2M_mappings_a_write_splits_and_only_the_written_page_is_dirty()
    {
        foreach (var split in new[] { SplitPolicy.Eager, SplitPolicy.Lazy })
        {
            var m = Model(Backing.AnonymousThp, split: split);
            WriteAll(m, 8L << 20, Huge);
            m.SetLogDirtyPages(1, true);
            ulong target = Gpa + Huge + 7 * Page;
            m.Access(0, target, write: true);
            Assert.Equal(1, m.Spte(target).Level);
            Assert.True(m.Spte(target).Writable);
            var log = m.GetDirtyLog(1);
            Assert.Equal([(long)((target - Gpa) / Page)], log.SetPages.ToArray());
            if (split == SplitPolicy.Eager)
            {
                Assert.Equal(4, m["huge_splits_eager"]);
                Assert.Equal(4 * 512, m["pages_4k"]);
            }
            else
            {
                Assert.Equal(1, m["huge_zaps_on_fault"]);
                Assert.Equal(3, m["pages_2m"]);
                Assert.Equal(1, m["pages_4k"]);
            }
        }
    }

    [Fact]
    public void A_masked_clear_touches_only_masked_bits()
    {
        foreach (var wrprot in new[] { true, false })
        {
            var m = Model(Backing.Anonymous, DirtyTracking.AdBits);
            WriteAll(m, 256 * Page); // present, writable, dirty (A/D enabled)
            ulong mask = 0b1010_0101UL | (1UL << 63);
            ulong gfn = Gpa / Page + 64;
            Assert.True(m.ClearDirtyPtMasked(gfn, mask, wrprot));
            for (int i = 0; i < 256; i++)
            {
                var s = m.Spte(Gpa + (ulong)i * Page);
                bool masked = i >= 64 && i < 128 && (mask >> (i - 64) & 1) != 0;
                Assert.Equal(!(masked && wrprot), s.Writable);
                Assert.Equal(!(masked && !wrprot), s.Dirty);
            }
        }
    }

    [Fact]
    public void Write_protect_with_a_2M_minimum_level_leaves_4K_SPTEs_alone()
    {
        var m = new TdpMmu();
        m.AddSlot(1, Gpa, new Size(4L << 20), Backing.AnonymousThp);
        m.AddSlot(2, Gpa + (4UL << 20), new Size(4L << 20), Backing.Anonymous);
        WriteAll(m, 8L << 20, Page);
        Assert.Equal(2, m["pages_2m"]);
        Assert.Equal(1024, m["pages_4k"]);
        ulong start = Gpa / Page, end = start + 2048;
        long writes = m["spte_writes"];
        Assert.True(m.WrprotGfnRange(start, end, 2));
        Assert.Equal(2, m["spte_writes"] - writes); // the two 2 MiB leaves, nothing else
        Assert.False(m.Spte(Gpa).Writable);
        Assert.False(m.Spte(Gpa + Huge + 5 * Page).Writable);
        for (long o = 4L << 20; o < 8L << 20; o += Page) Assert.True(m.Spte(Gpa + (ulong)o).Writable);
        Assert.True(m.WrprotGfnRange(start, end, 1));
        for (long o = 4L << 20; o < 8L << 20; o += Page) Assert.False(m.Spte(Gpa + (ulong)o).Writable);
        Assert.False(m.WrprotGfnRange(start, end, 1)); // nothing left to change: no flush needed
    }

    [Fact]
    public void The_PML_buffer_forces_an_exit_at_exactly_512_entries()
    {
        var m = Model(Backing.Anonymous, DirtyTracking.Pml, size: 4L << 20);
        WriteAll(m, 4L << 20);
        m.SetLogDirtyPages(1, true); // clears D on every 4 KiB SPTE
        for (int i = 0; i < 512; i++) m.Access(1, Gpa + (ulong)i * Page, write: true);
        Assert.Equal(0, m["pml_full_exits"]);
        Assert.Equal(512, m.PmlBuffered(1));
        Assert.Equal(0, m.Slot(1).Bitmap!.Count); // nothing reached the dirty bitmap yet
        m.Access(1, Gpa + 512 * Page, write: true);
        Assert.Equal(1, m["pml_full_exits"]);
        Assert.Equal(1, m.PmlBuffered(1));
        Assert.Equal(512, m.Slot(1).Bitmap!.Count);
        m.Access(1, Gpa + 512 * Page, write: true); // D already set: hardware logs nothing
        Assert.Equal(1, m.PmlBuffered(1));
        Assert.Equal(513, m.GetDirtyLog(1).Count); // GET flushes the buffers first
    }

    [Fact]
    public void Lazy_and_eager_split_give_the_same_dirty_sets_with_different_fault_counts()
    {
        var sets = new Dictionary<SplitPolicy, List<long[]>>();
        var faults = new Dictionary<SplitPolicy, long>();
        foreach (var split in new[] { SplitPolicy.Eager, SplitPolicy.Lazy })
        {
            var m = Model(Backing.AnonymousThp, split: split, size: 16L << 20);
            WriteAll(m, 16L << 20, Huge);
            m.SetLogDirtyPages(1, true);
            var got = new List<long[]>();
            var rng = new Random(5);
            for (int round = 0; round < 3; round++)
            {
                for (int i = 0; i < 300; i++) m.Access(i % 2, Gpa + (ulong)rng.NextInt64(4096) * Page, write: true);
                got.Add(m.GetDirtyLog(1).ToArray());
            }
            sets[split] = got;
            faults[split] = m["pf_fast"];
        }
        Assert.Equal(sets[SplitPolicy.Eager], sets[SplitPolicy.Lazy]);
        // Eager: every first write per round is a fast fault on a split, write-protected SPTE; lazy: a write into a page
        // not mapped since the zap takes the full fault path instead.
        Assert.True(faults[SplitPolicy.Eager] > faults[SplitPolicy.Lazy], $"fast faults eager {faults[SplitPolicy.Eager]}, lazy {faults[SplitPolicy.Lazy]}");
    }

    [Fact]
    public void Zap_collapsible_restores_2M_mappings_after_logging_stops()
    {
        var m = Model(Backing.AnonymousThp);
        WriteAll(m, 8L << 20, Huge);
        m.SetLogDirtyPages(1, true);
        WriteAll(m, 8L << 20, Page);
        Assert.Equal(2048, m["pages_4k"]);
        m.SetLogDirtyPages(1, false); // kvm_mmu_zap_collapsible_sptes
        Assert.Equal(4, m["zapped_collapsible"]);
        Assert.Equal(0, m["pages_4k"]);
        Assert.Contains(m.TlbFlushes, f => f.Operation == "zap collapsible SPTEs" && f.Flushes == 1);
        for (long o = 0; o < 8L << 20; o += Page) m.Access(0, Gpa + (ulong)o, write: false);
        Assert.Equal(4, m["pages_2m"]);
        Assert.Equal(2, m.Spte(Gpa + 3 * Page).Level);
    }

    [Fact]
    public void Write_protect_mode_logs_each_written_page_once_and_legacy_get_reprotects()
    {
        var m = Model(Backing.Anonymous);
        WriteAll(m, 1L << 20);
        m.SetLogDirtyPages(1, true);
        m.Access(0, Gpa + 3 * Page, write: true);
        m.Access(1, Gpa + 3 * Page + 8, write: true);
        m.Access(0, Gpa + 9 * Page, write: false);
        Assert.Equal(1, m["pf_fast"]);
        Assert.Equal([3L], m.GetDirtyLog(1).ToArray());
        Assert.False(m.Spte(Gpa + 3 * Page).Writable); // legacy GET re-protected it
        Assert.Empty(m.GetDirtyLog(1).ToArray());
    }

    [Fact]
    public void Manual_clear_checks_the_64_page_rule_like_KVM()
    {
        var m = Model(Backing.Anonymous, manual: true);
        m.SetLogDirtyPages(1, true);
        Assert.Throws<ArgumentException>(() => m.ClearDirtyLog(1, 32, 64));
        Assert.Throws<ArgumentException>(() => m.ClearDirtyLog(1, 0, 100));
        m.ClearDirtyLog(1, 0, m.Slot(1).Pages);
        var nolog = Model(Backing.Anonymous, manual: true);
        Assert.Throws<InvalidOperationException>(() => nolog.GetDirtyLog(1));
    }

    [Fact]
    public void Model_rejects_malformed_slots_and_accesses()
    {
        var m = Model(Backing.Anonymous);
        Assert.Throws<ArgumentException>(() => m.AddSlot(2, Gpa + 4096, new Size(1L << 20)));     // overlaps
        Assert.Throws<ArgumentException>(() => m.AddSlot(1, 0, new Size(1L << 20)));              // id taken
        Assert.Throws<ArgumentException>(() => m.AddSlot(3, 0, new Size(3L << 20), Backing.AnonymousThp));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Access(0, 0x1000, write: true));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Access(7, Gpa, write: true));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.WrprotGfnRange(0, 1, 4));
    }
}
