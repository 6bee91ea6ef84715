using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Plugins.Mmu.Tests;

public class Stage2Tests
{
    [Fact]
    public void Invalidating_by_IPA_when_coalescing_leaves_two_entries_for_one_address()
    {
        var m = new Stage2Mmu(0x4000_0000, new Size(4L << 20), CoalescePolicy.InvalidateByIpa).RunPageTableTest();
        Assert.Equal(2, m.ConflictCount);
        var c = m.Conflicts[0];
        Assert.Equal("KVM_ADJUST_MAPPINGS", c.Stage);
        Assert.Equal(0x4000_0000UL + 256 * 4096, c.Ipa); // the first page of the upper half, cached as 4 KiB in UPDATE
        Assert.Contains(c.Entries, e => e.Size == 4096 && e.Ipa == c.Ipa);
        Assert.Contains(c.Entries, e => e.Size == 2L << 20 && e.Ipa == 0x4000_0000UL);
    }

    [Fact]
    public void Break_before_make_reports_no_conflict_and_still_coalesces()
    {
        var m = new Stage2Mmu(0x4000_0000, new Size(4L << 20), CoalescePolicy.BreakBeforeMake).RunPageTableTest();
        Assert.Equal(0, m.ConflictCount);
        Assert.Equal(2, m.Counters["table_coalesces"]);
        Assert.Equal(2, m.Counters["block_dissolves"]);
    }

    [Fact]
    public void Malformed_slots_are_rejected()
    {
        Assert.Throws<ArgumentException>(() => new Stage2Mmu(0x1000, new Size(2L << 20), CoalescePolicy.BreakBeforeMake));
        Assert.Throws<ArgumentException>(() => new Stage2Mmu(0, new Size(3L << 20), CoalescePolicy.BreakBeforeMake));
        Assert.Throws<ArgumentOutOfRangeException>(() => new Stage2Mmu(0, new Size(4L << 20), CoalescePolicy.BreakBeforeMake, new Size(4L << 20)));
        var m = new Stage2Mmu(0, new Size(2L << 20), CoalescePolicy.BreakBeforeMake);
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Access(2UL << 20, write: false));
    }
}
