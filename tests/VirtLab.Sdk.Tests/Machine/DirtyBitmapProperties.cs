using FsCheck;
using FsCheck.Fluent;
using VirtLab.Sdk.Machine;
using Xunit;
using VirtLab.Tests;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>FsCheck properties: for random page sets, every view of a DirtyBitmap agrees with the set.</summary>
public class DirtyBitmapProperties
{
    static readonly Arbitrary<(int pages, int[] set)> PageSets = Arb.From(
        from pages in Gen.Choose(1, 3000)
        from set in Gen.ArrayOf(Gen.Choose(0, pages - 1))
        select (pages, set));

    [Fact]
    public void Views_agree_with_the_set() => Prop.ForAll(PageSets, t =>
    {
        var expected = t.set.Distinct().Order().Select(p => (long)p).ToArray();
        var b = DirtyBitmap.FromPages(t.pages, expected);
        var fromRuns = b.Runs.SelectMany(r => Enumerable.Range(0, (int)r.Count).Select(k => r.First + k)).ToArray();
        return b.Count == expected.Length
            && b.ToArray().SequenceEqual(expected)
            && fromRuns.SequenceEqual(expected)
            && b.NextSetPage(0) == (expected.Length > 0 ? expected[0] : -1);
    }).Check(PropertyRuns.Quick);

    [Fact]
    public void Or_and_andnot_are_set_union_and_difference() => Prop.ForAll(PageSets, PageSets, (x, y) =>
    {
        int pages = Math.Max(x.pages, y.pages);
        var a = DirtyBitmap.FromPages(pages, x.set.Select(p => (long)p));
        var b = DirtyBitmap.FromPages(pages, y.set.Select(p => (long)p));
        var union = x.set.Union(y.set).Order().Select(p => (long)p);
        var diff = x.set.Except(y.set).Order().Select(p => (long)p);
        return a.Clone().Or(b).ToArray().SequenceEqual(union) && a.Clone().AndNot(b).ToArray().SequenceEqual(diff);
    }).Check(PropertyRuns.Quick);
}
