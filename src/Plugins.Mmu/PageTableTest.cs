using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Mmu;

/// <summary>kvm_page_table_test's options (seed 000): <c>-b</c> size, <c>-p</c> offset, <c>-m</c> guest mode, <c>-s</c> backing, <c>-v</c> vCPUs.</summary>
public sealed record PageTableTestOptions
{
    /// <summary><c>-b</c>: size of the test memslot (default 1 GiB); a multiple of the backing's page size.</summary>
    public Size Memory { get; init; } = new(1L << 30);

    /// <summary><c>-p</c>: guest-physical offset of the test memslot; null = the top of the guest-physical space (as the selftest).</summary>
    public ulong? PhysOffset { get; init; }

    /// <summary><c>-m</c>: the guest mode's physical address bits (x86 has one mode, PA-bits:ANY VA-bits:48 4K); null = the host's.</summary>
    public int? GuestPhysBits { get; init; }

    /// <summary><c>-s</c>: backing of the test memory.</summary>
    public Backing Backing { get; init; } = Backing.Anonymous;

    /// <summary><c>-v</c>: vCPUs; even ids write, odd ids read in KVM_CREATE_MAPPINGS.</summary>
    public int Vcpus { get; init; } = 1;

    public Backend Backend { get; init; } = Backend.Auto;

    /// <summary>Every check that does not need a VM; throws naming the value and what is allowed.</summary>
    public void Validate()
    {
        Checks.BackendUsable(Backend);
        Checks.Vcpus(Vcpus, Backend);
        Checks.MultipleOfBackingPage(Memory, Backing, "memory");
        Checks.GuestPhysBits(GuestPhysBits);
        Checks.PhysOffset(PhysOffset, Memory, Backing, GuestPhysBits);
    }
}

/// <summary>One stage of the page-table test: wall time (all vCPUs released together to the last one done), per-vCPU times, KVM stats deltas.</summary>
public sealed record PageTableStageResult(
    string Name,
    double Seconds,
    IReadOnlyList<double> VcpuSeconds,
    long Reads,
    long Writes,
    IReadOnlyDictionary<string, long>? StatDeltas,
    IReadOnlyDictionary<string, long> ModelPageDeltas)
{
    public long Delta(string stat) => StatDeltas is { } d && d.TryGetValue(stat, out var v) ? v : 0;
}

/// <summary>What <see cref="MmuApi.PageTableTest(PageTableTestOptions)"/> measured: the three stages of seed 000 plus the two
/// memslot flag changes between them, as a table, as the selftest's text lines, and as a run-record value.</summary>
public sealed class PageTableTestResult : IDisplayable
{
    internal PageTableTestResult(string backend, string backing, int vcpus, Size memory, ulong gpa, int physBits,
        IReadOnlyList<PageTableStageResult> stages, bool statsAvailable, IReadOnlyList<string> lines, string? tdpMmu)
    {
        Backend = backend; Backing = backing; Vcpus = vcpus; Memory = memory.Bytes; Gpa = gpa; GuestPhysBits = physBits;
        Stages = stages; StatsAvailable = statsAvailable; Lines = lines; TdpMmu = tdpMmu;
        PageSizeCountersMoved = stages.Any(s => s.Delta("pages_4k") != 0 || s.Delta("pages_2m") != 0 || s.Delta("pages_1g") != 0);
        // Slot 0 (guest code, stacks, page tables) is first mapped in the first stage, so KVM's counts and the model's
        // (test slot only) are compared from the second stage on.
        ModelAgreesWithKvm = PageSizeCountersMoved
            ? stages.Skip(1).All(s => PageCounters.All(c => s.Delta(c) == s.ModelPageDeltas[c]))
            : null;
    }

    internal static readonly string[] PageCounters = ["pages_4k", "pages_2m", "pages_1g"];

    public string Backend { get; }
    public string Backing { get; }
    public int Vcpus { get; }
    public long Memory { get; }
    public ulong Gpa { get; }
    public int GuestPhysBits { get; }
    /// <summary>KVM_CREATE_MAPPINGS, logging on, KVM_UPDATE_MAPPINGS, logging off, KVM_ADJUST_MAPPINGS.</summary>
    public IReadOnlyList<PageTableStageResult> Stages { get; }
    /// <summary>Whether KVM binary statistics were read (KVM backend).</summary>
    public bool StatsAvailable { get; }
    /// <summary>Whether pages_4k / pages_2m / pages_1g moved in any stage.</summary>
    public bool PageSizeCountersMoved { get; }
    /// <summary>Whether KVM's page-size deltas equal the TDP MMU model's after the first stage; null when the counters did not move (nothing to compare).</summary>
    public bool? ModelAgreesWithKvm { get; }
    /// <summary>The kvm module's tdp_mmu parameter, when readable.</summary>
    public string? TdpMmu { get; }
    /// <summary>What the page-size counters mean on this run, in one sentence.</summary>
    public string PageSizeNote => !StatsAvailable
        ? "No KVM statistics: the simulator has no SPTEs, so there are no page-size counters; the model column shows what the TDP MMU model maps."
        : PageSizeCountersMoved
            ? "pages_4k / pages_2m / pages_1g moved: the deltas show the mappings KVM created, split and recovered" +
              (ModelAgreesWithKvm == true ? ", and equal the TDP MMU model's." : "; the TDP MMU model's differ (see the model column).")
            : $"pages_4k / pages_2m / pages_1g did not move in any stage: on this host (tdp_mmu={TdpMmu ?? "?"}, guest code emulated, " +
              "shadow paging) KVM does not account these mappings, so their zeros are not findings. The TDP MMU model (Mmu.Model) shows the counts a host that runs guests natively reports.";
    /// <summary>The selftest's output lines.</summary>
    public IReadOnlyList<string> Lines { get; }

    public PageTableStageResult this[string name] => Stages.First(s => s.Name == name);

    public IRenderable ToRenderable()
    {
        var t = new Table().Border(TableBorder.Rounded)
            .Title(Markup.Escape($"kvm_page_table_test on {Backend}: {new Size(Memory)} {Backing}, {Vcpus} vCPU(s), gpa 0x{Gpa:x}"));
        t.AddColumn("stage").AddColumn(new TableColumn("total ms").RightAligned());
        for (int v = 0; v < Vcpus && v < 8; v++) t.AddColumn(new TableColumn($"vCPU {v} ms").RightAligned());
        t.AddColumn("KVM stats Δ (pages_4k / pages_2m / pages_1g, remote TLB flushes, every counter that moved)");
        t.AddColumn(new TableColumn("model Δ 4K / 2M / 1G").RightAligned());
        foreach (var s in Stages)
        {
            var cells = new List<string> { s.Name, (s.Seconds * 1e3).ToString("0.###") };
            for (int v = 0; v < Vcpus && v < 8; v++) cells.Add(v < s.VcpuSeconds.Count ? (s.VcpuSeconds[v] * 1e3).ToString("0.###") : "");
            cells.Add(s.StatDeltas is null ? "(no KVM stats)" : s.StatDeltas.Count == 0 ? "(no change)"
                : string.Join(", ", s.StatDeltas.Select(kv => $"{kv.Key} {(kv.Value >= 0 ? "+" : "")}{kv.Value:N0}")));
            cells.Add(string.Join(" / ", PageCounters.Select(c => s.ModelPageDeltas[c].ToString("+#,0;-#,0;0"))));
            t.AddRow(cells.Select(c => new Text(c)).ToArray<IRenderable>());
        }
        t.Caption(Markup.Escape(PageSizeNote));
        return t;
    }

    public override string ToString() => string.Join(Environment.NewLine, Lines);
}

internal static class PageTableTestRunner
{
    static readonly string[] AlwaysShown = ["pages_4k", "pages_2m", "pages_1g", "remote_tlb_flush", "remote_tlb_flush_requests"];

    public static PageTableTestResult Run(PageTableTestOptions o, TextWriter? log, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(o);
        o.Validate();
        using var vm = Vm.Create(new VmOptions(o.Memory)
        {
            Vcpus = o.Vcpus, Backing = o.Backing, Backend = o.Backend, TestSlotGpa = o.PhysOffset, GuestPhysBits = o.GuestPhysBits,
        });
        return Run(vm, log, cancellation);
    }

    /// <summary>The three stages on an existing VM's test slot (it must not be logging yet).</summary>
    public static PageTableTestResult Run(Vm vm, TextWriter? log, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(vm);
        var slot = vm.TestSlot;
        if (slot.LogDirtyPages)
            throw new InvalidOperationException($"the page-table test starts with dirty logging off (KVM_CREATE_MAPPINGS); {slot} is logging. Set LogDirtyPages = false first");
        var lines = new List<string>();
        void Say(string s) { lines.Add(s); log?.WriteLine(s); }
        var kvm = vm.IsKvm();
        var stats = kvm ? vm.KvmVmStats() : null;
        string? tdp = null;
        if (kvm)
            foreach (var (_, p) in KvmSystem.Probe().ModuleParameters)
                if (p.TryGetValue("tdp_mmu", out var v)) tdp = v;

        Say($"Testing guest mode: PA-bits:{vm.GuestPhysBits}, VA-bits:48, 4K pages");
        Say($"Testing memory backing src type: {vm.Backing.Name()}");
        Say($"Testing memory backing src granularity: 0x{vm.Backing.PageSize():x}");
        Say($"Testing memory size(aligned): 0x{slot.Size.Bytes:x}");
        Say($"Guest physical test memory offset: 0x{slot.Gpa:x}");
        Say($"Host  virtual  test memory offset: 0x{slot.HostAddress:x}");
        Say($"Number of testing vCPUs: {vm.Vcpus}");
        Say($"Backend: {vm.Backend}" + (kvm ? $" (tdp_mmu={tdp ?? "?"})" : ""));

        var stages = new List<PageTableStageResult>();
        // The TDP MMU model runs the same accesses: the page counts a host that runs guests natively reports (eager split, KVM's default).
        var model = TdpMmu.For(vm, DirtyTracking.WriteProtect, SplitPolicy.Eager);
        Dictionary<string, long> ModelDelta(Action step)
        {
            var before = PageTableTestResult.PageCounters.Select(c => model[c]).ToArray();
            step();
            return PageTableTestResult.PageCounters.Select((c, i) => (c, model[c] - before[i])).ToDictionary(x => x.c, x => x.Item2);
        }
        Dictionary<string, long>? Delta(KvmStatsSnapshot? before)
        {
            if (stats is null || before is null) return null;
            var d = stats.Snapshot().Since(before);
            var map = new Dictionary<string, long>();
            foreach (var n in AlwaysShown) if (stats.Has(n)) map[n] = d[n];
            foreach (var c in d.Changes) map[c.Name] = c.Delta;
            return map;
        }

        void Stage(PageTableStage stage)
        {
            cancellation.ThrowIfCancellationRequested();
            var w = Workload.PageTableTest(stage, vm.Backing, slot.Id);
            var before = stats?.Snapshot();
            var r = vm.Run(w, cancellation: cancellation);
            var kvmDelta = Delta(before);
            var name = w.Name!;
            var modelDelta = ModelDelta(() => model.Run(vm.Plan(w)));
            stages.Add(new PageTableStageResult(name, r.PassTimes[0].TotalSeconds,
                r.PerVcpu.Select(v => v.PassTimes[0].TotalSeconds).ToArray(), r.Reads, r.Writes, kvmDelta, modelDelta));
            Say($"{name}: total execution time: {Checks.Seconds(r.PassTimes[0])}");
            foreach (var v in r.PerVcpu) Say($"  vCPU {v.Vcpu} ({v.Role.ToString().ToLowerInvariant()}) has completed stage {name}, execution time is: {Checks.Seconds(v.PassTimes[0])}");
            Say("");
        }

        void Flags(bool on)
        {
            var before = stats?.Snapshot();
            long t0 = System.Diagnostics.Stopwatch.GetTimestamp();
            slot.LogDirtyPages = on;
            var t = System.Diagnostics.Stopwatch.GetElapsedTime(t0);
            var kvmDelta = Delta(before);
            var name = on ? "KVM_MEM_LOG_DIRTY_PAGES on" : "KVM_MEM_LOG_DIRTY_PAGES off";
            var modelDelta = ModelDelta(() => model.SetLogDirtyPages(slot.Id, on));
            stages.Add(new PageTableStageResult(name, t.TotalSeconds, [], 0, 0, kvmDelta, modelDelta));
            Say($"{name}: {Checks.Seconds(t)}");
        }

        Say("Started all vCPUs successfully");
        Stage(PageTableStage.CreateMappings);
        Flags(true);
        Stage(PageTableStage.UpdateMappings);
        Flags(false);
        Stage(PageTableStage.AdjustMappings);

        var result = new PageTableTestResult(vm.Backend.ToString(), vm.Backing.Name(), vm.Vcpus, slot.Size, slot.Gpa, vm.GuestPhysBits,
            stages, stats is not null, lines, tdp);
        foreach (var s in stages)
        {
            if (s.StatDeltas is not null)
                Say($"{s.Name}: KVM stats Δ " + (s.StatDeltas.Count == 0 ? "(none)" : string.Join(", ", s.StatDeltas.Select(kv => $"{kv.Key} {kv.Value:+#;-#;0}"))));
            Say($"{s.Name}: TDP MMU model Δ " + string.Join(", ", s.ModelPageDeltas.Select(kv => $"{kv.Key} {kv.Value:+#;-#;0}")));
        }
        Say(result.PageSizeNote);
        return result;
    }
}
