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
}
