using VirtLab.Plugins.Balloon.Guest;
using VirtLab.Sdk.Machine;
using Xunit;

namespace VirtLab.Plugins.Balloon.Tests;

public class AllocatorTests
{
    static GuestPageAllocator Make(long firstPfn = 0x40000, long pages = 8192) => new([new PageRun(firstPfn, pages)]);

    [Fact]
    public void Single_pages_walk_upwards_and_freeing_them_all_restores_the_buddy_lists()
    {
        var a = Make();
        var before = a.BuddyInfo;
        Assert.Equal([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8], before);
        var pages = new long[8192];
        Assert.Equal(8192, a.AllocatePages(pages, 8192));
        Assert.Equal(Enumerable.Range(0, 8192).Select(i => 0x40000L + i), pages);
        Assert.Equal(0, a.FreePages);
        Assert.Equal(-1, a.Allocate());
        a.FreeAll(pages);
        Assert.Equal(before, a.BuddyInfo);
        Assert.Equal(8192, a.FreePages);
    }

    [Fact]
    public void Blocks_are_naturally_aligned_and_split_low_half_first()
    {
        var a = Make(0x40000 + 3, 4096 - 3); // unaligned start: small blocks first
        var info = a.BuddyInfo;
        Assert.Equal(4093, Enumerable.Range(0, 11).Sum(o => info[o] << o));
        var p = a.Allocate(9);
        Assert.Equal(0, p % 512);
        var q = a.Allocate(0);
        Assert.Equal(0x40003, q); // the lowest free frame (an order-0 block)
        a.Free(q);
        a.Free(p, 9);
        Assert.Equal(info, a.BuddyInfo);
    }

    [Fact]
    public void Double_free_and_foreign_frames_are_refused()
    {
        var a = Make();
        var p = a.Allocate(0);
        a.Free(p);
        Assert.Throws<InvalidOperationException>(() => a.Free(p));
        var b = a.Allocate(3);
        Assert.Throws<InvalidOperationException>(() => { a.Free(b, 3); a.Free(b + 1, 0); });
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Free(0x10, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => a.Allocate(11));
    }

    [Fact]
    public void Holes_between_ranges_are_never_handed_out()
    {
        var a = new GuestPageAllocator([new PageRun(0x1000, 300), new PageRun(0x1200, 100)]);
        var got = new long[400];
        Assert.Equal(400, a.AllocatePages(got, 400));
        Assert.All(got, p => Assert.True(p is >= 0x1000 and < 0x1000 + 300 or >= 0x1200 and < 0x1200 + 100));
        Assert.Equal(400, got.Distinct().Count());
        Assert.False(a.IsRam(0x1000 + 300));
    }

    [Fact]
    public void Reporting_isolates_unreported_blocks_once()
    {
        var a = Make();
        var held = a.Allocate(0); // splits one 4 MiB block
        var first = a.IsolateUnreported(9, 32);
        Assert.Equal(8192 - 1024, first.Where(b => b.Order == 10).Sum(b => 1L << b.Order));
        Assert.All(first, b => Assert.True(b.Order >= 9));
        Assert.Equal(8192 - 1 - first.Sum(b => 1L << b.Order), a.FreePages);
        a.ReturnReported(first);
        Assert.Equal(first.Sum(b => 1L << b.Order), a.ReportedPages);
        Assert.Empty(a.IsolateUnreported(9, 32)); // all large blocks are reported now
        a.Free(held);
    }
}
