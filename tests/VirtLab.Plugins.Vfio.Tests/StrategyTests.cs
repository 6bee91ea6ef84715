using FsCheck;
using FsCheck.Fluent;
using VirtLab.Plugins.Vfio.Devices;
using VirtLab.Plugins.Vfio.Tracking;
using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Sdk.Machine;
using Xunit;
using VirtLab.Tests;

namespace VirtLab.Plugins.Vfio.Tests;

/// <summary>The five strategies on the same device traffic: identical dirty sets where they see the same writes.</summary>
public class StrategyTests
{
    const ulong P = Fx.Page;

    sealed class Setup : IDisposable
    {
        public readonly Vm Vm = Fx.SimVm(16);
        public readonly VfioContainer C;
        public readonly List<IDirtyTracker> All;
        public readonly ulong End;

        public Setup(int seed, bool passthrough, bool clearTail)
        {
            var r = new Random(seed);
            C = passthrough ? Fx.Passthrough(Vm) : Fx.Mdev(Vm);
            C.ClearShiftedTail = clearTail;
            var ramPages = (ulong)Vm.TestSlot.Pages;
            ulong iova = (ulong)r.Next(0, 70) * P;
            for (var i = 0; i < r.Next(3, 30); i++)
            {
                var pages = (ulong)r.Next(1, 150);
                var at = (ulong)r.NextInt64(0, (long)(ramPages - pages));
                C.MapGuestRam(iova, Vm.TestSlot.Gpa + at * P, pages * P);
                iova += pages * P + (ulong)(r.Next(3) == 0 ? 0 : r.Next(1, 90)) * P;
            }
            End = iova;
            All = [
                new PerDmaBitmapTracker(C),
                C.Track(new DirtyRangeTreeTracker(C)),
                new QemuIovaWalkTracker(C),
                C.Track(new IommufdTracker(C)),
                C.Track(new DeviceDmaLoggingTracker(C)),
            ];
            C.StartDirtyTracking();
        }

        public long[] Report(IDirtyTracker t, bool noClear = false)
        {
            var words = new ulong[(End / P + 63) / 64];
            var ret = t.Query(0, End, P, words, noClear);
            Assert.True(ret == 0, $"{t.Name}: query returned {ret}");
            return Fx.SetPages(words);
        }

        public void Dispose()
        {
            C.Dispose();
            Vm.Dispose();
        }
    }

    static void Traffic(Setup s, DmaDevice dev, Random r, int writes)
    {
        var dmas = s.C.Dmas;
        for (var i = 0; i < writes; i++)
        {
            var d = dmas[r.Next(dmas.Count)];
            var off = (ulong)r.NextInt64(0, (long)d.Size);
            var len = Math.Min((ulong)r.Next(1, 3 * 4096), d.Size - off);
            if (dev is MediatedDevice m) m.UseDmaRw = r.Next(2) == 0;
            Assert.True(dev.Write(d.Iova + off, new byte[len]), dev.LastFault);
        }
    }

    [Fact]
    public void All_strategies_report_the_same_pages_for_a_mediated_device()
    {
        Prop.ForAll(Arb.From(Gen.Choose(0, int.MaxValue)), seed =>
        {
            using var s = new Setup(seed, passthrough: false, clearTail: true);
            var mdev = s.Vm.Attach(new MediatedDevice(s.C));
            var r = new Random(seed);
            for (var round = 0; round < 4; round++)
            {
                Traffic(s, mdev, r, r.Next(0, 60));
                var peek = s.Report(s.All[3], noClear: true);          // iommufd NO_CLEAR: read, keep
                // the merged bitmaps and QEMU's walk read the same per-dma state (a report clears it): one per round
                var trackers = s.All.Where((t, k) => k != (round % 2 == 0 ? 2 : 0)).ToArray();
                var reports = trackers.Select(t => s.Report(t)).ToArray();
                Assert.Equal(peek, reports[2]);
                for (var k = 1; k < reports.Length; k++)
                    Assert.True(reports[0].SequenceEqual(reports[k]),
                        $"seed {seed} round {round}: {trackers[0].Name} [{string.Join(",", reports[0])}] vs {trackers[k].Name} [{string.Join(",", reports[k])}]");
            }
            Assert.Equal(0, ((DeviceDmaLoggingTracker)s.All[4]).Unlogged);
            return true;
        }).Check(PropertyRuns.Quick.WithMaxTest(25));
    }

    [Fact]
    public void With_the_kernels_shifted_tail_the_merged_bitmaps_report_a_superset()
    {
        Prop.ForAll(Arb.From(Gen.Choose(0, int.MaxValue)), seed =>
        {
            using var s = new Setup(seed, passthrough: false, clearTail: false);
            var mdev = s.Vm.Attach(new MediatedDevice(s.C));
            var r = new Random(seed);
            for (var round = 0; round < 4; round++)
            {
                Traffic(s, mdev, r, r.Next(0, 60));
                var merged = s.Report(s.All[0]);
                var tree = s.Report(s.All[1]);
                Assert.Empty(tree.Except(merged));                     // never loses a page
            }
            return true;
        }).Check(PropertyRuns.Quick.WithMaxTest(15));
    }

    [Fact]
    public void For_a_passthrough_device_type1_reports_every_mapped_page_and_hardware_tracking_only_what_was_written()
    {
        using var s = new Setup(7, passthrough: true, clearTail: true);
        var dev = s.Vm.Attach(new PassthroughDevice(s.C, group: s.C.Groups[0]));
        var r = new Random(7);
        Traffic(s, dev, r, 40);
        var mapped = s.C.Dmas.SelectMany(d => Enumerable.Range(0, (int)(d.Size / P)).Select(i => (long)(d.Iova / P) + i)).ToArray();
        var written = s.Report(s.All[3]);
        Assert.NotEmpty(written);
        Assert.True(written.Length < mapped.Length);
        Assert.Equal(written, s.Report(s.All[4]));                    // device logging saw the same writes
        foreach (var t in s.All.Take(3)) Assert.Equal(mapped, s.Report(t));   // every report, again and again
    }

    [Fact]
    public void The_qemu_walk_steps_once_per_unmapped_page_and_queries_once_per_mapping()
    {
        using var s = new Setup(3, passthrough: false, clearTail: true);
        var walk = (QemuIovaWalkTracker)s.All[2];
        s.Report(walk);
        var mappedPages = s.C.Dmas.Sum(d => (long)(d.Size / P));
        Assert.Equal(s.C.Dmas.Count, walk.LastGets);
        Assert.Equal((long)(s.End / P) - mappedPages + s.C.Dmas.Count, walk.LastSteps);
    }

    [Fact]
    public void Range_set_matches_a_set_of_pages()
    {
        Prop.ForAll(Arb.From(Gen.ArrayOf(Gen.Choose(0, 3000))), ops =>
        {
            var rs = new RangeSet();
            var set = new HashSet<ulong>();
            for (var i = 0; i + 2 < ops.Length; i += 3)
            {
                ulong a = (ulong)ops[i], b = a + (ulong)(ops[i + 1] % 300);
                if (ops[i + 2] % 3 == 0) { rs.Remove(a, b); for (var p = a; p < b; p++) set.Remove(p); }
                else { rs.Add(a, b); for (var p = a; p < b; p++) set.Add(p); }
            }
            var all = rs.All().ToArray();
            var pages = all.SelectMany(x => Enumerable.Range(0, (int)(x.E - x.S)).Select(k => x.S + (ulong)k)).ToArray();
            var disjoint = all.Zip(all.Skip(1)).All(z => z.First.E < z.Second.S);
            return disjoint && pages.SequenceEqual(set.Order()) && rs.Count == all.Length;
        }).Check(PropertyRuns.Quick);
    }

    [Fact]
    public void Iommufd_and_device_logging_report_any_aligned_range_at_a_larger_page_size()
    {
        using var s = new Setup(11, passthrough: false, clearTail: true);
        var mdev = s.Vm.Attach(new MediatedDevice(s.C) { UseDmaRw = true });
        var d = s.C.Dmas.First(x => x.Size >= 2 * P);
        Assert.True(mdev.Write(d.Iova + P, new byte[8]));
        var at = d.Iova + P;
        foreach (var t in new[] { s.All[3], s.All[4] })
        {
            var words = new ulong[2];
            // an 8 KiB-aligned range that need not start at a mapping: type1 would refuse a cut, these do not
            var start = d.Iova & ~(2 * P - 1);
            Assert.Equal(0, t.Query(start, 128 * 2 * P, 2 * P, words));
            Assert.Equal([(long)((at - start) / (2 * P))], Fx.SetPages(words));
        }
        Assert.Equal(-VirtLab.Sdk.Native.Errno.EINVAL, s.All[0].Query(d.Iova + P, d.Size - P, P, new ulong[64]));
    }
}
