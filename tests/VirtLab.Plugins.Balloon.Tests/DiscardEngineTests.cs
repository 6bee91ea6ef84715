using VirtLab.Plugins.Balloon.Host;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Plugins.Balloon.Tests;

/// <summary>The device's validation, translation and discard against real guest memory (the simulator maps it like KVM).</summary>
public class DiscardEngineTests
{
    internal static Vm SimVm(Size memory, Backing backing = Backing.Anonymous)
        => Vm.Create(new VmOptions(memory) { Backend = Backend.Sim, Backing = backing, TestSlotGpa = 1UL << 32 });

    static List<PageRun> Runs(params (long First, long Count)[] r) => r.Select(x => new PageRun(x.First, x.Count)).ToList();

    [Fact]
    public void Inflate_discards_exactly_the_pages_and_deflate_gives_them_back()
    {
        using var vm = SimVm(16.MiB());
        var slot = vm.TestSlot;
        vm.Memory.Populate(slot.Gpa, slot.Size);
        var e = new DiscardEngine(vm, wholeThpPages: true);
        var t = new DeviceTicks();
        long first = (long)slot.BaseGfn;
        foreach (var mode in new[] { DiscardMode.PerPage, DiscardMode.Runs })
        {
            var before = vm.Memory.Resident(slot.Gpa, slot.Size);
            Assert.True(e.Inflate(Runs((first + 100, 300), (first + 1000, 1)), mode, ref t, out var err), err.ToString());
            Assert.Equal(before - 301 * 4096, vm.Memory.Resident(slot.Gpa, slot.Size));
            Assert.Equal(Enumerable.Range(100, 300).Append(1000).Select(i => first + i), e.BalloonedPfns());
            Assert.True(e.Deflate(Runs((first + 1000, 1), (first + 100, 300)), mode, DeflateHint.WillNeed, ref t, out err), err.ToString());
            Assert.Empty(e.BalloonedPfns());
            vm.Memory.Populate(slot.Gpa, slot.Size);
        }
        Assert.Equal(0, t.DiscardErrors);
        Assert.Equal(301 + 2, t.DiscardCalls); // per page: 301 calls; runs: 2
    }

    [Fact]
    public void Hostile_runs_are_refused_whole_and_change_nothing()
    {
        using var vm = SimVm(8.MiB());
        var slot = vm.TestSlot;
        vm.Memory.Populate(slot.Gpa, slot.Size);
        var resident = vm.Memory.ResidentBytes;
        var e = new DiscardEngine(vm, wholeThpPages: true);
        var t = new DeviceTicks();
        long first = (long)slot.BaseGfn, end = first + slot.Pages;
        void Refused(List<PageRun> runs, BalloonErrorKind kind, bool inflate = true)
        {
            bool ok = inflate ? e.Inflate(runs, DiscardMode.Runs, ref t, out var err) : e.Deflate(runs, DiscardMode.Runs, DeflateHint.WillNeed, ref t, out err);
            Assert.False(ok);
            Assert.Equal(kind, err.Kind);
        }
        Refused(Runs((first, 10), (end, 1)), BalloonErrorKind.OutsideRam);            // the page after RAM
        Refused(Runs((end - 5, 10)), BalloonErrorKind.OutsideRam);                    // runs off the end
        Refused(Runs((0, 1)), BalloonErrorKind.OutsideRam);                           // system slot 0
        Refused(Runs((first + 3, 1), (first + 3, 1)), BalloonErrorKind.Overlap);      // repeated
        Refused(Runs((first, 10), (first + 9, 2)), BalloonErrorKind.Overlap);         // overlapping
        Refused(Runs((first, 1)), BalloonErrorKind.NotInBalloon, inflate: false);     // deflate of a page not in the balloon
        Assert.True(e.Inflate(Runs((first, 4)), DiscardMode.Runs, ref t, out _));
        Refused(Runs((first + 3, 2)), BalloonErrorKind.AlreadyInBalloon);
        Assert.Equal(resident - 4 * 4096, vm.Memory.ResidentBytes);
        Assert.Equal(4, e.BalloonedPages);
    }

    [Fact]
    public void Thp_pages_are_discarded_only_when_every_4k_part_is_in()
    {
        using var vm = SimVm(8.MiB(), Backing.AnonymousThp);
        var slot = vm.TestSlot;
        vm.Memory.Populate(slot.Gpa, slot.Size);
        var e = new DiscardEngine(vm, wholeThpPages: true);
        var t = new DeviceTicks();
        long hp = (long)slot.BaseGfn + 512; // the second 2 MiB page
        var before = vm.Memory.Resident(slot.Gpa, slot.Size);
        foreach (var mode in new[] { DiscardMode.PerPage, DiscardMode.Runs })
        {
            // All but one part, in two requests and out of order: nothing is discarded yet.
            Assert.True(e.Inflate(Runs((hp + 256, 255)), mode, ref t, out _));
            Assert.True(e.Inflate(Runs((hp, 256)), mode, ref t, out _));
            Assert.Equal(before, vm.Memory.Resident(slot.Gpa, slot.Size));
            Assert.Equal(1, e.PartialHostPages());
            Assert.True(e.Inflate(Runs((hp + 511, 1)), mode, ref t, out _)); // the last part completes it
            Assert.Equal(before - 2.MiB(), vm.Memory.Resident(slot.Gpa, slot.Size));
            Assert.Equal(0, e.PartialHostPages());
            Assert.True(e.Deflate(Runs((hp, 512)), mode, DeflateHint.None, ref t, out _));
            vm.Memory.Populate(slot.Gpa, slot.Size);
        }
    }

    [HugetlbFact]
    public void Hugetlb_pages_are_discarded_only_when_every_4k_part_is_in()
    {
        using var vm = SimVm(4.MiB(), Backing.AnonymousHugetlb2M);
        var slot = vm.TestSlot;
        vm.Memory.Populate(slot.Gpa, slot.Size);
        var e = new DiscardEngine(vm, wholeThpPages: false);
        var t = new DeviceTicks();
        long hp = (long)slot.BaseGfn;
        var before = vm.Memory.Resident(slot.Gpa, slot.Size);
        Assert.True(e.Inflate(Runs((hp, 511)), DiscardMode.PerPage, ref t, out _));
        Assert.Equal(0, t.DiscardCalls); // a 4 KiB discard of a hugetlb page is impossible; nothing is tried
        Assert.Equal(before, vm.Memory.Resident(slot.Gpa, slot.Size));
        Assert.True(e.Inflate(Runs((hp + 511, 1)), DiscardMode.PerPage, ref t, out _));
        Assert.Equal(before - 2.MiB(), vm.Memory.Resident(slot.Gpa, slot.Size));
        Assert.Equal(0, t.DiscardErrors);
    }

    [Fact]
    public void Free_page_reports_must_be_aligned_ram_outside_the_balloon()
    {
        using var vm = SimVm(8.MiB(), Backing.AnonymousThp);
        var slot = vm.TestSlot;
        vm.Memory.Populate(slot.Gpa, slot.Size);
        var e = new DiscardEngine(vm, wholeThpPages: true);
        var t = new DeviceTicks();
        Assert.False(e.Report([(slot.Gpa + 4096, 2.MiB().Bytes)], ref t, out var err));
        Assert.Equal(BalloonErrorKind.Misaligned, err.Kind);
        Assert.False(e.Report([(0, 2.MiB().Bytes)], ref t, out err));
        Assert.Equal(BalloonErrorKind.OutsideRam, err.Kind);
        var before = vm.Memory.Resident(slot.Gpa, slot.Size);
        Assert.True(e.Report([(slot.Gpa + (ulong)2.MiB(), 4.MiB().Bytes)], ref t, out err), err.ToString());
        Assert.Equal(before - 4.MiB(), vm.Memory.Resident(slot.Gpa, slot.Size));
    }
}

/// <summary>A fact that needs four free 2 MiB hugetlb pages; skipped with the reason where the pool has fewer.</summary>
public sealed class HugetlbFactAttribute : FactAttribute
{
    public HugetlbFactAttribute()
    {
        var pool = HostInfo.HugePages(2L << 20);
        if (pool.Available < 4) Skip = $"needs 4 free 2 MiB hugetlb pages; the pool has {pool.Available} (reserve them with: echo 4 > /proc/sys/vm/nr_hugepages)";
    }
}
