using System.Diagnostics;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk;
using VirtLab.Sdk.Machine;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Mmu;

/// <summary>How dirty pages are collected.</summary>
public enum DirtyLogMode
{
    /// <summary>KVM_GET_DIRTY_LOG returns the bitmap and re-protects (dirty_log_perf_test <c>-g</c>).</summary>
    Get,
    /// <summary>KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2: GET copies, KVM_CLEAR_DIRTY_LOG re-protects in chunks.</summary>
    ManualProtect,
    /// <summary>Manual protect with KVM_DIRTY_LOG_INITIALLY_SET: enabling sets every bit and protects nothing.</summary>
    ManualProtectInitiallySet,
    /// <summary>KVM_CAP_DIRTY_LOG_RING: per-vCPU rings harvested, then KVM_RESET_DIRTY_RINGS.</summary>
    Ring,
}

/// <summary>dirty_log_perf_test's options.</summary>
public sealed record DirtyLogPerfOptions
{
    /// <summary><c>-v</c></summary>
    public int Vcpus { get; init; } = 1;
    /// <summary><c>-b</c>: guest memory per vCPU (default 1 GiB).</summary>
    public Size MemoryPerVcpu { get; init; } = new(1L << 30);
    /// <summary><c>-i</c>: dirty-memory iterations after the populate pass.</summary>
    public int Iterations { get; init; } = 2;
    /// <summary><c>-w</c></summary>
    public int WritePercent { get; init; } = 100;
    /// <summary><c>-a</c></summary>
    public bool RandomAccess { get; init; }
    /// <summary><c>-r</c></summary>
    public uint Seed { get; init; } = 1;
    /// <summary><c>-x</c>: the test memory split across this many adjacent memslots.</summary>
    public int Memslots { get; init; } = 1;
    /// <summary><c>-s</c></summary>
    public Backing Backing { get; init; } = Backing.Anonymous;
    /// <summary><c>-o</c>: every vCPU walks all the memory instead of its own share.</summary>
    public bool Overlap { get; init; }
    public DirtyLogMode Mode { get; init; } = DirtyLogMode.ManualProtect;
    /// <summary>Manual protect: bytes of guest memory per KVM_CLEAR_DIRTY_LOG call (a multiple of 64 pages = 256 KiB); null = a whole slot per call.</summary>
    public Size? ClearChunk { get; init; }
    /// <summary>Ring mode: ring bytes per vCPU (a power of two, 4 KiB … KVM_CAP_DIRTY_LOG_RING).</summary>
    public long RingBytes { get; init; } = 64 * 1024;
    public Backend Backend { get; init; } = Backend.Auto;

    public Size TotalMemory => new(checked(MemoryPerVcpu.Bytes * Vcpus));

    public void Validate()
    {
        Checks.BackendUsable(Backend);
        Checks.Vcpus(Vcpus, Backend);
        Checks.MultipleOfBackingPage(MemoryPerVcpu, Backing, "memory per vCPU");
        if (Iterations < 1 || Iterations > Workload.MaxPasses)
            throw new ArgumentOutOfRangeException(nameof(Iterations), $"iterations must be 1 … {Workload.MaxPasses:N0}; got {Iterations}");
        if (WritePercent is < 0 or > 100)
            throw new ArgumentOutOfRangeException(nameof(WritePercent), $"write percent must be 0 … 100; got {WritePercent}");
        if (Memslots < 1 || Memslots > 32000)
            throw new ArgumentOutOfRangeException(nameof(Memslots), $"memslots must be 1 … 32000 (KVM_CAP_NR_MEMSLOTS is 32764, less slot 0); got {Memslots}");
        var total = TotalMemory;
        long page = Backing.PageSize();
        if (total.Bytes % Memslots != 0 || total.Bytes / Memslots % page != 0)
            throw new ArgumentException(
                $"{Memslots} memslots cannot split {total} of test memory evenly into multiples of the {Backing.Name()} page size {new Size(page)}; " +
                $"pick a memslot count that divides {total.Bytes / page} pages", nameof(Memslots));
        if (ClearChunk is { } c)
        {
            if (Mode is not (DirtyLogMode.ManualProtect or DirtyLogMode.ManualProtectInitiallySet))
                throw new ArgumentException($"a clear chunk ({c}) only applies to manual protect (KVM_CLEAR_DIRTY_LOG); mode is {Mode}", nameof(ClearChunk));
            if (c.Bytes <= 0 || c.Bytes % (64 * 4096) != 0)
                throw new ArgumentException(
                    $"clear chunk {c} ({c.Bytes} bytes = {c.Bytes / 4096.0:0.##} pages) breaks KVM's alignment: KVM_CLEAR_DIRTY_LOG takes first_page and num_pages in multiples of 64 pages, " +
                    $"so the chunk must be a positive multiple of 256 KiB (e.g. {new Size(Math.Max(1, c.Bytes / (64 * 4096)) * 64 * 4096)})", nameof(ClearChunk));
        }
        if (Mode == DirtyLogMode.Ring) Checks.RingBytes(RingBytes, Backend);
        var ram = HostInfo.MemTotalBytes;
        if (ram > 0 && total.Bytes > ram)
            throw new ArgumentOutOfRangeException(nameof(MemoryPerVcpu), $"{Vcpus} vCPUs × {MemoryPerVcpu} = {total} is more than this host has ({new Size(ram)})");
    }
}

/// <summary>One dirty-memory iteration: times and the pages collected (checked against the workload's plan).</summary>
public sealed record DirtyLogIteration(int Iteration, double DirtySeconds, double GetSeconds, double ClearSeconds,
    long DirtyPages, long ExpectedPages, bool Matches, long RingFullExits);

/// <summary>What <see cref="MmuApi.DirtyLogPerf(DirtyLogPerfOptions)"/> measured.</summary>
public sealed class DirtyLogPerfResult : IDisplayable
{
    internal DirtyLogPerfResult(DirtyLogPerfOptions options, string backend, double populate, double enable, double disable,
        IReadOnlyList<DirtyLogIteration> iterations, IReadOnlyList<string> lines)
    {
        Options = options; Backend = backend; PopulateSeconds = populate; EnableSeconds = enable; DisableSeconds = disable;
        Iterations = iterations; Lines = lines;
    }

    public DirtyLogPerfOptions Options { get; }
    public string Backend { get; }
    public double PopulateSeconds { get; }
    public double EnableSeconds { get; }
    public double DisableSeconds { get; }
    public IReadOnlyList<DirtyLogIteration> Iterations { get; }
    /// <summary>Every iteration's collected set equalled the plan's.</summary>
    public bool AllMatch => Iterations.All(i => i.Matches);
    public double AverageDirtySeconds => Iterations.Average(i => i.DirtySeconds);
    public double AverageGetSeconds => Iterations.Average(i => i.GetSeconds);
    public double AverageClearSeconds => Iterations.Average(i => i.ClearSeconds);
    public IReadOnlyList<string> Lines { get; }

    public IRenderable ToRenderable()
    {
        var o = Options;
        var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape(
            $"dirty_log_perf_test on {Backend}: {o.Vcpus} vCPU(s) × {o.MemoryPerVcpu} {o.Backing.Name()}, {o.Memslots} slot(s), {o.Mode}, {o.WritePercent}% writes{(o.RandomAccess ? ", random" : "")}{(o.Overlap ? ", overlap" : "")}"));
        var (get, clear) = o.Mode == DirtyLogMode.Ring ? ("harvest ms", "reset ms") : ("get ms", "clear ms");
        t.AddColumn("iteration").AddColumn(new TableColumn("dirty ms").RightAligned()).AddColumn(new TableColumn(get).RightAligned())
            .AddColumn(new TableColumn(clear).RightAligned()).AddColumn(new TableColumn("dirty pages").RightAligned())
            .AddColumn(new TableColumn("planned").RightAligned()).AddColumn("check");
        foreach (var i in Iterations)
            t.AddRow(i.Iteration.ToString(), Ms(i.DirtySeconds), Ms(i.GetSeconds), Ms(i.ClearSeconds), i.DirtyPages.ToString("N0"),
                i.ExpectedPages.ToString("N0"), i.Matches ? "[green]exact[/]" : "[red]MISMATCH[/]");
        t.AddRow("[bold]average[/]", Ms(AverageDirtySeconds), Ms(AverageGetSeconds), Ms(AverageClearSeconds), "", "", "");
        t.Caption(Markup.Escape($"populate {Ms(PopulateSeconds)} ms, enable logging {Ms(EnableSeconds)} ms, disable {Ms(DisableSeconds)} ms"));
        return t;
    }

    static string Ms(double s) => (s * 1e3).ToString("0.###");

    public override string ToString() => string.Join(Environment.NewLine, Lines);
}

internal static class DirtyLogPerfRunner
{
    public static DirtyLogPerfResult Run(DirtyLogPerfOptions o, TextWriter? log, CancellationToken cancellation)
    {
        ArgumentNullException.ThrowIfNull(o);
        o.Validate();
        var lines = new List<string>();
        void Say(string s) { lines.Add(s); log?.WriteLine(s); }

        long slotBytes = o.TotalMemory.Bytes / o.Memslots;
        int ringBytes = o.Mode == DirtyLogMode.Ring ? checked((int)o.RingBytes) : 0; // bytes; VmOptions takes a Size
        var vmOptions = new VmOptions(new Size(slotBytes))
        {
            Vcpus = o.Vcpus, Backing = o.Backing, Backend = o.Backend,
            ManualProtect = o.Mode is DirtyLogMode.ManualProtect or DirtyLogMode.ManualProtectInitiallySet,
            InitiallySet = o.Mode == DirtyLogMode.ManualProtectInitiallySet,
            DirtyRingBytes = new Size(ringBytes),
        };
        using var vm = Vm.Create(vmOptions);
        var slots = new List<MemSlot> { vm.TestSlot };
        for (int i = 1; i < o.Memslots; i++) slots.Add(vm.AddSlot(new Size(slotBytes)));
        slots.Sort((a, b) => a.Gpa.CompareTo(b.Gpa));
        for (int i = 1; i < slots.Count; i++)
            if (slots[i].Gpa != slots[i - 1].EndGpa)
                throw new InvalidOperationException($"memslots are not adjacent: {slots[i - 1]} then {slots[i]}");
        ulong gpa = slots[0].Gpa;
        long length = o.TotalMemory.Bytes;

        Say($"Testing guest mode: PA-bits:{vm.GuestPhysBits}, VA-bits:48, 4K pages");
        Say($"guest physical test memory: [0x{gpa:x}, 0x{gpa + (ulong)length:x})");
        Say($"Backend: {vm.Backend}; {o.Vcpus} vCPU(s), {o.MemoryPerVcpu} each, {o.Memslots} memslot(s) of {new Size(slotBytes)} {o.Backing.Name()}; mode {o.Mode}");

        var populate = Workload.DirtyLogPerfPopulate(o.Overlap).In(gpa, length);
        var pop = vm.Run(populate, cancellation: cancellation);
        Say($"Populate memory time: {Checks.Seconds(pop.Elapsed)}");

        long t0 = Stopwatch.GetTimestamp();
        foreach (var s in slots) s.LogDirtyPages = true;
        var enable = Stopwatch.GetElapsedTime(t0);
        Say($"Enabling dirty logging time: {Checks.Seconds(enable)}");
        Say("");

        var work = Workload.DirtyLogPerf(o.WritePercent, o.RandomAccess, o.Seed, o.Overlap, o.Iterations).In(gpa, length);
        var plan = vm.Plan(work);
        var expect = new PassExpectation(plan);
        var iterations = new List<DirtyLogIteration>();
        var union = slots.ToDictionary(s => s.Id, s => new DirtyBitmap(s.Pages)); // what the passes wrote, all together
        var bitmaps = slots.ToDictionary(s => s.Id, s => new DirtyBitmap(s.Pages));
        long chunkPages = o.ClearChunk is { } c ? c.Bytes / 4096 : long.MaxValue;
        long ringFullSeen = 0;
        var dirtyTimes = new double[o.Iterations];

        var run = vm.Run(work, afterPass: pass =>
        {
            // All vCPUs wait at the sync point: collect this iteration's dirty set and check it against the plan.
            var expected = expect.NextPass();
            foreach (var (id, b) in expected) union[id].Or(b);
            if (pass == 0 && o.Mode == DirtyLogMode.ManualProtectInitiallySet)
                foreach (var b in expected.Values) b.SetAll(); // INITIALLY_SET: the first GET reports every page
            double getS, clearS = 0;
            long t = Stopwatch.GetTimestamp();
            if (o.Mode == DirtyLogMode.Ring)
            {
                var harvested = vm.DirtyRing!.HarvestBitmaps();
                getS = Stopwatch.GetElapsedTime(t).TotalSeconds;
                foreach (var s in slots)
                {
                    if (harvested.TryGetValue(s.Id, out var h)) bitmaps[s.Id].CopyFrom(h);
                    else bitmaps[s.Id].ClearAll();
                }
                t = Stopwatch.GetTimestamp();
                vm.DirtyRing.Reset();
                clearS = Stopwatch.GetElapsedTime(t).TotalSeconds;
            }
            else
            {
                foreach (var s in slots) s.GetDirtyLog(bitmaps[s.Id]);
                getS = Stopwatch.GetElapsedTime(t).TotalSeconds;
                if (vm.ManualProtect)
                {
                    t = Stopwatch.GetTimestamp();
                    foreach (var s in slots)
                    {
                        long step = Math.Min(chunkPages, s.Pages);
                        for (long first = 0; first < s.Pages; first += step)
                            s.ClearDirtyLog(first, Math.Min(step, s.Pages - first), bitmaps[s.Id]);
                    }
                    clearS = Stopwatch.GetElapsedTime(t).TotalSeconds;
                }
            }
            long got = 0, want = 0;
            bool same = true;
            foreach (var s in slots)
            {
                got += bitmaps[s.Id].Count;
                want += expected[s.Id].Count;
                same &= bitmaps[s.Id].Equals(expected[s.Id]);
            }
            long full = vm.DirtyRing?.FullExits ?? 0;
            iterations.Add(new DirtyLogIteration(pass + 1, 0, getS, clearS, got, want, same, full - ringFullSeen));
            ringFullSeen = full;
        }, cancellation: cancellation);

        for (int i = 0; i < iterations.Count; i++)
        {
            var it = iterations[i] with { DirtySeconds = run.PassTimes[i].TotalSeconds };
            iterations[i] = it;
            Say($"Iteration {it.Iteration} dirty memory time: {Checks.Seconds(TimeSpan.FromSeconds(it.DirtySeconds))}");
            if (o.Mode == DirtyLogMode.Ring)
            {
                Say($"Iteration {it.Iteration} harvest dirty rings time: {Checks.Seconds(TimeSpan.FromSeconds(it.GetSeconds))}");
                Say($"Iteration {it.Iteration} reset dirty rings time: {Checks.Seconds(TimeSpan.FromSeconds(it.ClearSeconds))}");
            }
            else
            {
                Say($"Iteration {it.Iteration} get dirty log time: {Checks.Seconds(TimeSpan.FromSeconds(it.GetSeconds))}");
                if (vm.ManualProtect) Say($"Iteration {it.Iteration} clear dirty log time: {Checks.Seconds(TimeSpan.FromSeconds(it.ClearSeconds))}");
            }
            Say($"Iteration {it.Iteration} dirty pages: {it.DirtyPages} ({(it.Matches ? "exactly the planned pages" : $"MISMATCH: planned {it.ExpectedPages}")})");
        }

        // The per-pass expectations together are exactly the plan's ExpectedWrites over all passes.
        var planned = plan.ExpectedWrites();
        bool planConsistent = slots.All(s => planned[s.Id].Equals(union[s.Id]));
        if (!planConsistent) throw new InvalidOperationException("the per-pass expectations do not add up to WorkloadPlan.ExpectedWrites(): a harness bug");

        t0 = Stopwatch.GetTimestamp();
        foreach (var s in slots) s.LogDirtyPages = false;
        var disable = Stopwatch.GetElapsedTime(t0);
        Say("");
        Say($"Disabling dirty logging time: {Checks.Seconds(disable)}");

        int n = iterations.Count;
        TimeSpan Sum(Func<DirtyLogIteration, double> f) => TimeSpan.FromSeconds(iterations.Sum(f));
        var (getName, clearName) = o.Mode == DirtyLogMode.Ring ? ("Harvest dirty rings", "Reset dirty rings") : ("Get dirty log", "Clear dirty log");
        Say($"Dirty memory over {n} iterations took {Checks.Seconds(Sum(i => i.DirtySeconds))}. (Avg {Checks.Seconds(Sum(i => i.DirtySeconds) / n)}/iteration)");
        Say($"{getName} over {n} iterations took {Checks.Seconds(Sum(i => i.GetSeconds))}. (Avg {Checks.Seconds(Sum(i => i.GetSeconds) / n)}/iteration)");
        if (o.Mode != DirtyLogMode.Get)
            Say($"{clearName} over {n} iterations took {Checks.Seconds(Sum(i => i.ClearSeconds))}. (Avg {Checks.Seconds(Sum(i => i.ClearSeconds) / n)}/iteration)");
        return new DirtyLogPerfResult(o, vm.Backend.ToString(), pop.Elapsed.TotalSeconds, enable.TotalSeconds, disable.TotalSeconds, iterations, lines);
    }
}

/// <summary>
/// The pages each pass of a plan writes, pass by pass — the same cursors (<see cref="WorkloadPlan.Cursor"/>) that
/// <see cref="WorkloadPlan.ExpectedWrites"/> walks, kept across passes so each call costs one pass.
/// </summary>
public sealed class PassExpectation
{
    readonly WorkloadPlan plan;
    readonly WorkloadCursor[] cursors;

    public PassExpectation(WorkloadPlan plan)
    {
        this.plan = plan ?? throw new ArgumentNullException(nameof(plan));
        cursors = Enumerable.Range(0, plan.Vcpus).Select(plan.Cursor).ToArray();
    }

    /// <summary>Pages (per slot id) the next pass writes.</summary>
    public Dictionary<int, DirtyBitmap> NextPass()
    {
        var result = plan.Slots.ToDictionary(s => s.Id, s => new DirtyBitmap(s.Pages));
        var slots = plan.Slots;
        for (int v = 0; v < cursors.Length; v++)
        {
            ref var c = ref cursors[v]; // a struct: advance the stored cursor, not a copy
            c.BeginPass();
            MemSlot? last = null;
            while (c.Next(out var gpa, out var write))
            {
                if (!write) continue;
                if (last is null || !last.Contains(gpa)) last = slots.First(s => s.Contains(gpa));
                result[last.Id].Set((long)((gpa - last.Gpa) >> 12));
            }
        }
        return result;
    }
}
