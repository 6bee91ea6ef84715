using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Tests.Kvm; // KvmFact, linked from the SDK tests
using Xunit;

namespace VirtLab.Plugins.Mmu.Tests;

[CollectionDefinition("Mmu KVM", DisableParallelization = true)]
public sealed class MmuKvmCollection;

/// <summary>Bad input: a clear error naming the value and what is allowed, before any VM exists (so on any host).</summary>
public class BadInputTests
{
    static readonly MmuApi Mmu = new() { Log = null };

    static string Fails(Action a) => Assert.ThrowsAny<ArgumentException>(a).Message;

    [Fact]
    public void Page_table_test_options_out_of_range()
    {
        Assert.Contains("3 MiB", Fails(() => Mmu.PageTableTest(new Size(3L << 20), Backing.AnonymousThp, backend: Backend.Sim)));
        Assert.Contains("2 MiB", Fails(() => Mmu.PageTableTest(new Size(3L << 20), Backing.AnonymousThp, backend: Backend.Sim)));
        Assert.Contains("got 0", Fails(() => Mmu.PageTableTest(new Size(1L << 20), vcpus: 0, backend: Backend.Sim)));
        Assert.Contains("got 5000", Fails(() => Mmu.PageTableTest(new Size(1L << 20), vcpus: 5000, backend: Backend.Sim)));
        Assert.Contains("0x1234", Fails(() => Mmu.PageTableTest(new Size(1L << 20), physOffset: 0x1234, backend: Backend.Sim)));
        Assert.Contains("got 60", Fails(() => Mmu.PageTableTest(new Size(1L << 20), guestPhysBits: 60, backend: Backend.Sim)));
        Assert.Contains("does not fit", Fails(() => Mmu.PageTableTest(new Size(1L << 20), physOffset: 0xffff_ffff_0000UL, guestPhysBits: 36, backend: Backend.Sim)));
    }

    [Fact]
    public void Dirty_log_perf_options_out_of_range()
    {
        var ok = new DirtyLogPerfOptions { MemoryPerVcpu = new Size(1L << 20), Backend = Backend.Sim };
        Assert.Contains("got 0", Fails(() => Mmu.DirtyLogPerf(ok with { Iterations = 0 })));
        Assert.Contains("got 101", Fails(() => Mmu.DirtyLogPerf(ok with { WritePercent = 101 })));
        Assert.Contains("got 5000", Fails(() => Mmu.DirtyLogPerf(ok with { Vcpus = 5000 })));
        Assert.Contains("2 MiB", Fails(() => Mmu.DirtyLogPerf(ok with { Backing = Backing.AnonymousThp })));
        Assert.Contains("64 pages", Fails(() => Mmu.DirtyLogPerf(ok with { ClearChunk = new Size(128 << 10) })));
        Assert.Contains("only applies to manual protect", Fails(() => Mmu.DirtyLogPerf(ok with { Mode = DirtyLogMode.Ring, ClearChunk = new Size(256 << 10) })));
        Assert.Contains("got 100000", Fails(() => Mmu.DirtyLogPerf(ok with { Mode = DirtyLogMode.Ring, RingBytes = 100000 })));
        Assert.Contains("got 2048", Fails(() => Mmu.DirtyLogPerf(ok with { Mode = DirtyLogMode.Ring, RingBytes = 2048 })));
        Assert.Contains("3 memslots", Fails(() => Mmu.DirtyLogPerf(ok with { Memslots = 3 })));
        Assert.Contains("got 0", Fails(() => Mmu.DirtyLogPerf(ok with { Memslots = 0 })));
    }
}

/// <summary>The harness on the simulator (any host): the same dirty-logging semantics as KVM.</summary>
public class SimHarnessTests
{
    static readonly MmuApi Mmu = new() { Log = null };

    [Fact]
    public void Dirty_log_perf_reports_exactly_the_planned_pages_in_every_mode()
    {
        foreach (var mode in Enum.GetValues<DirtyLogMode>())
        {
            var r = Mmu.DirtyLogPerf(new DirtyLogPerfOptions
            {
                Vcpus = 2, MemoryPerVcpu = new Size(1L << 20), Iterations = 3, WritePercent = 40, RandomAccess = true, Seed = 9,
                Memslots = 2, Mode = mode, Backend = Backend.Sim, RingBytes = 16384,
                ClearChunk = mode is DirtyLogMode.ManualProtect ? new Size(256 << 10) : null,
            });
            Assert.Equal(3, r.Iterations.Count);
            Assert.All(r.Iterations, i => Assert.True(i.Matches, $"{mode} iteration {i.Iteration}: {i.DirtyPages} vs {i.ExpectedPages}"));
            Assert.NotEqual(0, r.Iterations[1].ExpectedPages);
            if (mode == DirtyLogMode.ManualProtectInitiallySet) Assert.Equal(512, r.Iterations[0].DirtyPages);
            Assert.Contains(r.Lines, l => l.StartsWith("Populate memory time: "));
            Assert.Contains(r.Lines, l => l.StartsWith("Iteration 3 dirty memory time: "));
        }
    }

    [Fact]
    public void Pass_expectations_add_up_to_the_plans_expected_writes()
    {
        using var vm = Vm.Create(new VmOptions(new Size(1L << 20)) { Vcpus = 2, Backend = Backend.Sim });
        var plan = vm.Plan(Workload.DirtyLogPerf(30, randomAccess: true, seed: 4, iterations: 3));
        var e = new PassExpectation(plan);
        var union = new DirtyBitmap(vm.TestSlot.Pages);
        var passes = Enumerable.Range(0, 3).Select(_ => e.NextPass()[1]).ToList();
        foreach (var p in passes) union.Or(p);
        Assert.Equal(plan.ExpectedWrites()[1], union);
        Assert.NotEqual(passes[0], passes[1]); // the generator continues across passes
    }

    [Fact]
    public void Tracker_collects_what_was_dirtied_since_the_last_call()
    {
        foreach (var (manual, ring) in new[] { (false, 0), (true, 0), (false, 16384) })
        {
            using var vm = Vm.Create(new VmOptions(new Size(2L << 20)) { Backend = Backend.Sim, ManualProtect = manual, DirtyRingBytes = new Size(ring) });
            var t = Mmu.Track(vm);
            vm.Run(Workload.Write(stride: 8192));
            var first = t.Collect();
            Assert.Equal(256, first.Pages);
            Assert.Equal(256, first.Runs);
            Assert.Equal(0, t.Collect().Pages);
            vm.Run(Workload.Write(stride: 4096) with { Length = 64 * 4096 });
            var second = t.Collect();
            Assert.Equal(64, second.Pages);
            Assert.Equal(1, second.Runs);
            var map = second.Heatmap(columns: 8, rows: 1);
            Assert.Contains("|█       |", map); // first 64 of 512 pages: the first of 8 cells full, the rest clean
        }
    }

    [Fact]
    public void Page_table_test_on_the_simulator_says_there_are_no_stats()
    {
        var r = Mmu.PageTableTest(new Size(4L << 20), Backing.AnonymousThp, vcpus: 2, backend: Backend.Sim);
        Assert.False(r.StatsAvailable);
        Assert.Contains("No KVM statistics", r.PageSizeNote);
        Assert.Equal(2, r["KVM_CREATE_MAPPINGS"].VcpuSeconds.Count);
        Assert.Equal(2, r["KVM_CREATE_MAPPINGS"].Writes);  // vCPU 0 writes each of 2 huge pages; vCPU 1 reads
        Assert.Equal(2, r["KVM_CREATE_MAPPINGS"].Reads);
        Assert.Contains(r.Lines, l => l.StartsWith("KVM_UPDATE_MAPPINGS: total execution time: "));
    }

    [Fact]
    public void Model_and_simulator_dirty_sets_agree()
    {
        ModelAgreesWith(Backend.Sim);
    }

    internal static void ModelAgreesWith(Backend backend)
    {
        foreach (var backing in new[] { Backing.Anonymous, Backing.AnonymousThp })
        {
            using var vm = Vm.Create(new VmOptions(new Size(4L << 20)) { Vcpus = 2, Backing = backing, Backend = backend, ManualProtect = true });
            var model = TdpMmu.For(vm, DirtyTracking.Pml, SplitPolicy.Eager);
            var populate = Workload.DirtyLogPerfPopulate();
            var work = Workload.DirtyLogPerf(60, randomAccess: true, seed: 3, iterations: 2);
            vm.Run(populate);
            model.Run(vm.Plan(populate));
            vm.TestSlot.LogDirtyPages = true;
            model.SetLogDirtyPages(1, true);
            var real = new List<DirtyBitmap>();
            vm.Run(work, afterPass: _ => { var b = vm.TestSlot.GetDirtyLog(); vm.TestSlot.ClearDirtyLog(b); real.Add(b); });
            var modeled = new List<DirtyBitmap>();
            model.Run(vm.Plan(work), afterPass: _ => { var b = model.GetDirtyLog(1); model.ClearDirtyLog(1, 0, b.Pages, b); modeled.Add(b); });
            Assert.Equal(real, modeled);
            Assert.True(real[0].Count > 0);
        }
    }
}

/// <summary>On real KVM.</summary>
[Collection("Mmu KVM")]
public class KvmHarnessTests
{
    static readonly MmuApi Mmu = new() { Log = null };

    [KvmFact]
    public void The_three_stages_run_on_every_backing_available_here()
    {
        foreach (var backing in new[] { Backing.Anonymous, Backing.AnonymousThp, Backing.Shmem, Backing.AnonymousHugetlb2M, Backing.SharedHugetlb })
        {
            if (backing.IsHugetlb() && HostInfo.HugePages(backing.PageSize()).Available < 2) continue; // no reserved huge pages here
            var r = Mmu.PageTableTest(new Size(4L << 20), backing, vcpus: 2, backend: Backend.Kvm);
            Assert.True(r.StatsAvailable);
            Assert.Equal(5, r.Stages.Count);
            foreach (var s in r.Stages) Assert.True(s.StatDeltas!.ContainsKey("pages_4k") && s.StatDeltas.ContainsKey("remote_tlb_flush"));
            Assert.Equal(2L * 1024, r["KVM_ADJUST_MAPPINGS"].Reads);
            Assert.Contains(r.Lines, l => l.StartsWith("KVM_ADJUST_MAPPINGS: total execution time: "));
            if (!r.PageSizeCountersMoved) Assert.Contains("not findings", r.PageSizeNote);
        }
    }

    [KvmFact]
    public void Dirty_log_perf_reports_exactly_the_planned_pages_in_all_three_modes()
    {
        foreach (var mode in new[] { DirtyLogMode.Get, DirtyLogMode.ManualProtect, DirtyLogMode.Ring })
        {
            var r = Mmu.DirtyLogPerf(new DirtyLogPerfOptions
            {
                Vcpus = 2, MemoryPerVcpu = new Size(512 << 10), Iterations = 2, WritePercent = 50, RandomAccess = true,
                Mode = mode, Backend = Backend.Kvm, RingBytes = 16384,
            });
            Assert.All(r.Iterations, i => Assert.True(i.Matches, $"{mode} iteration {i.Iteration}: {i.DirtyPages} vs {i.ExpectedPages}"));
        }
    }

    [KvmFact]
    public void Model_and_KVM_dirty_sets_agree() => SimHarnessTests.ModelAgreesWith(Backend.Kvm);
}
