using FsCheck;
using FsCheck.Fluent;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;
using VirtLab.Tests;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>Random map / unmap sequences: every lookup agrees with a plain list of mappings searched linearly.</summary>
public sealed class IovaSpaceProperties : IDisposable
{
    readonly Vm vm = Vm.Create(new VmOptions(1.MiB()) { Backend = Backend.Sim });

    public void Dispose() => vm.Dispose();

    static readonly Arbitrary<(int start, int len, bool remove, int perm)[]> Ops = Arb.From(
        Gen.ArrayOf(
            from start in Gen.Choose(0, 600)
            from len in Gen.Frequency((4, Gen.Choose(1, 3)), (1, Gen.Choose(1, 40)))
            from remove in Gen.Frequency((4, Gen.Constant(false)), (1, Gen.Constant(true)))
            from perm in Gen.Choose(1, 3)
            select (start, len, remove, perm)));

    [Fact]
    public void Lookups_agree_with_a_linear_model() => Prop.ForAll(Ops, ops =>
    {
        var s = new IovaSpace(vm.PhysicalSpace, "model check");
        var model = new List<IovaMapping>();
        const ulong Unit = 0x100;
        foreach (var (start, len, remove, perm) in ops)
        {
            ulong iova = (ulong)start * Unit + 0x10, size = (ulong)len * Unit;
            bool overlaps = model.Any(m => m.Overlaps(iova, size));
            if (s.Overlaps(iova, size) != overlaps) return false;
            if (remove)
            {
                var removed = s.RemoveOverlapping(iova, size);
                var expect = model.Where(m => m.Overlaps(iova, size)).OrderBy(m => m.Iova).ToList();
                model.RemoveAll(m => m.Overlaps(iova, size));
                if (!removed.SequenceEqual(expect)) return false;
            }
            else
            {
                var target = (ulong)start * 0x1000;
                if (s.TryMap(iova, size, target, (MemoryAccess)perm) == overlaps) return false;
                if (!overlaps) model.Add(new IovaMapping(iova, size, target, (MemoryAccess)perm));
            }
        }
        if (!s.Mappings.SequenceEqual(model.OrderBy(m => m.Iova))) return false;
        // Probe the first, last and middle bytes of every unit, plus the bytes between units.
        for (ulong a = 0; a < 660 * Unit; a += Unit / 4 - 1)
        {
            var m = model.FirstOrDefault(x => x.Contains(a));
            var found = s.Find(a);
            if (found != (model.Any(x => x.Contains(a)) ? m : null)) return false;
            var ok = s.TryTranslate(a, 1, MemoryAccess.Read, out var t, out _, out var f);
            var readable = found is { } fm && (fm.Perm & MemoryAccess.Read) != 0;
            if (ok != readable) return false;
            if (ok && t != found!.Value.Target + (a - found.Value.Iova)) return false;
            if (!ok && f.Reason != (found is null ? MemoryFaultReason.Unmapped : MemoryFaultReason.Permission)) return false;
        }
        return true;
    }).Check(PropertyRuns.Quick.WithMaxTest(200));

    /// <summary>
    /// Thousands of mappings (the table is then many chunks that split and empty out): inserts, exact and overlapping
    /// removals and a whole-table replace agree with the linear model at every step's boundaries.
    /// </summary>
    [Fact]
    public void Large_tables_agree_with_a_linear_model()
    {
        var rnd = new Random(20261124); // fixed: a deterministic sequence, no timing
        var s = new IovaSpace(vm.PhysicalSpace, "large model check");
        var model = new List<IovaMapping>();
        const ulong Unit = 0x100;
        void Check()
        {
            Assert.Equal(model.OrderBy(m => m.Iova), s.Mappings);
            Assert.Equal(model.Count, s.Count);
            foreach (var m in model)
            {
                Assert.Equal(m, s.Find(m.Iova));
                Assert.Equal(m, s.Find(m.Last));
                Assert.True(s.TryTranslate(m.Last, 1, MemoryAccess.None, out var t, out _, out _));
                Assert.Equal(m.Target + (m.Size - 1), t);
                if (!model.Any(x => x.Contains(m.Last + 1))) Assert.Null(s.Find(m.Last + 1));
            }
        }
        for (int step = 0; step < 6000; step++)
        {
            ulong iova = (ulong)rnd.Next(0, 8000) * Unit, size = (ulong)rnd.Next(1, 4) * Unit;
            bool overlaps = model.Any(m => m.Overlaps(iova, size));
            Assert.Equal(overlaps, s.Overlaps(iova, size));
            switch (rnd.Next(10))
            {
                case 0:
                    var expect = model.Where(m => m.Overlaps(iova, size)).OrderBy(m => m.Iova).ToList();
                    Assert.Equal(expect, s.RemoveOverlapping(iova, size));
                    model.RemoveAll(m => m.Overlaps(iova, size));
                    break;
                case 1 when model.Count > 0:
                    var victim = model[rnd.Next(model.Count)];
                    Assert.True(s.Remove(victim.Iova, victim.Size));
                    Assert.False(s.Remove(victim.Iova, victim.Size));
                    model.Remove(victim);
                    break;
                default:
                    Assert.Equal(!overlaps, s.TryMap(iova, size, iova * 3, MemoryAccess.ReadWrite));
                    if (!overlaps) model.Add(new IovaMapping(iova, size, iova * 3, MemoryAccess.ReadWrite));
                    break;
            }
            if (step % 1000 == 999) Check();
        }
        Assert.True(model.Count > 1000, $"the table should grow large ({model.Count} mappings)");
        // A whole-table replace: refused (nothing changes) when two entries overlap, else installed at once.
        var shuffled = model.OrderBy(_ => rnd.Next()).ToList();
        Assert.False(s.TryReplace([.. shuffled, shuffled[0] with { Size = 1 }]));
        Check();
        var fresh = shuffled.Where((_, k) => k % 2 == 0).ToList();
        Assert.True(s.TryReplace(fresh));
        model = fresh;
        Check();
    }
}
