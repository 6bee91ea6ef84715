using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Rendering;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>The workload definition (WorkloadCursor) that both backends follow.</summary>
public class WorkloadTests
{
    static List<(ulong gpa, bool write)> Pass(WorkloadPlan plan, int vcpu, int passes = 1)
    {
        var c = plan.Cursor(vcpu);
        var list = new List<(ulong, bool)>();
        for (int p = 0; p < passes; p++)
        {
            c.BeginPass();
            while (c.Next(out var g, out var w)) list.Add((g, w));
        }
        return list;
    }

    [Fact]
    public void Partition_gives_each_vcpu_a_contiguous_share()
    {
        using var vm = Vm.Create(new VmOptions(1.MiB()) { Backend = Backend.Sim, Vcpus = 3 });
        var plan = vm.Plan(Workload.Write());
        Assert.Equal(256, plan.Strides);
        Assert.Equal(new long[] { 85, 85, 86 }, plan.Slices.Select(s => s.Strides).ToArray());
        var all = Enumerable.Range(0, 3).SelectMany(v => Pass(plan, v)).Select(a => a.gpa).ToArray();
        Assert.Equal(Enumerable.Range(0, 256).Select(i => vm.TestSlot.Gpa + (ulong)i * 4096).ToArray(), all);
    }

    [Fact]
    public void Seed_000_update_stage_for_huge_backings_writes_the_first_page_and_reads_the_upper_half()
    {
        using var vm = Vm.Create(new VmOptions(4.MiB()) { Backend = Backend.Sim, Backing = Backing.AnonymousThp, Vcpus = 2 });
        var plan = vm.Plan(Workload.PageTableTest(PageTableStage.UpdateMappings, Backing.AnonymousThp));
        var a = Pass(plan, 1);
        Assert.Equal(2 * (1 + 256), a.Count); // overlap: every vCPU walks both 2 MiB pages
        var b = vm.TestSlot.Gpa;
        Assert.Equal((b, true), a[0]);
        Assert.Equal((b + 1.MiB(), false), a[1]);
        Assert.Equal((b + 2.MiB() - 4096, false), a[256]);
        Assert.Equal((b + 2.MiB(), true), a[257]);
        var create = vm.Plan(Workload.PageTableTest(PageTableStage.CreateMappings, Backing.AnonymousThp));
        Assert.All(Pass(create, 0), x => Assert.True(x.write));
        Assert.All(Pass(create, 1), x => Assert.False(x.write));
        Assert.Equal(2, Pass(create, 0).Count);
    }

    [Fact]
    public void Random_order_and_write_mix_are_deterministic_per_seed_and_vcpu()
    {
        using var vm = Vm.Create(new VmOptions(1.MiB()) { Backend = Backend.Sim, Vcpus = 2 });
        var w = new Workload { Order = AccessOrder.Random, WritePercent = 50, Seed = 11, Passes = 2 };
        var plan = vm.Plan(w);
        Assert.Equal(Pass(plan, 0, 2), Pass(plan, 0, 2));
        Assert.NotEqual(Pass(plan, 0), Pass(plan, 1).Select(x => (x.gpa - 128 * 4096, x.write)).ToList());
        var writes = Pass(plan, 0, 2).Count(x => x.write);
        Assert.InRange(writes, 64, 192); // ~50% of 256
        Assert.NotEqual(Pass(plan, 0), Pass(vm.Plan(w with { Seed = 12 }), 0));
    }

    [Fact]
    public void Shuffled_is_a_permutation_for_any_stride_count()
    {
        foreach (var pages in new[] { 1, 2, 3, 5, 64, 100, 255 })
        {
            using var vm = Vm.Create(new VmOptions((pages * 4096L).Bytes()) { Backend = Backend.Sim });
            var plan = vm.Plan(new Workload { Order = AccessOrder.Shuffled, Seed = (uint)pages, Passes = 2 });
            var seq = Pass(plan, 0, 2);
            Assert.Equal(2 * pages, seq.Count);
            Assert.Equal(pages, seq.Take(pages).Select(x => x.gpa).Distinct().Count());
            Assert.Equal(pages, seq.Skip(pages).Select(x => x.gpa).Distinct().Count());
        }
    }

    [Fact]
    public void Run_reports_per_vcpu_and_per_pass()
    {
        using var vm = Vm.Create(new VmOptions(1.MiB()) { Backend = Backend.Sim, Vcpus = 2 });
        var r = vm.Run(Workload.Write(passes: 3) with { SyncEachPass = false });
        Assert.Equal(2, r.PerVcpu.Count);
        Assert.All(r.PerVcpu, v => Assert.Equal(3, v.PassTimes.Count));
        Assert.Equal(3 * 256, r.Writes);
        Assert.Equal(3, r.PassTimes.Count);
        Assert.Contains("768 accesses (768 writes)", r.ToString());
        // The table shows each vCPU's row with its counts and one column per pass; the VM shows its slots.
        var table = Render.Text(r.ToRenderable());
        Assert.Contains("on Sim:", table);
        Assert.Contains("pass 2 ms", table);
        Assert.Matches(@"│ 0 +│ \w+ +│ 0 +│ 384 +│", table);
        Assert.Matches(@"│ 1 +│ \w+ +│ 0 +│ 384 +│", table);
        var shown = Render.Text(vm.ToRenderable());
        Assert.Contains("Sim VM, 2 vCPU(s)", shown);
        foreach (var s in vm.Slots) Assert.Contains($"[0x{s.Gpa:x}, 0x{s.EndGpa:x})", shown);
    }
}
