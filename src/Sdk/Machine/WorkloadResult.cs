using Spectre.Console;
using System.Collections.Immutable;
using System.Globalization;
using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>One vCPU's part of a run.</summary>
public sealed record VcpuResult(int Vcpu, VcpuRole Role, IReadOnlyList<TimeSpan> PassTimes, long Reads, long Writes)
{
    public TimeSpan Total => PassTimes.Aggregate(TimeSpan.Zero, (a, b) => a + b);
    public long Accesses => Reads + Writes;
}

/// <summary>What <see cref="Vm.Run"/> measured.</summary>
public sealed record WorkloadResult(
    Workload Workload,
    Backend Backend,
    int Vcpus,
    TimeSpan Elapsed,
    IReadOnlyList<TimeSpan> PassTimes,
    IReadOnlyList<VcpuResult> PerVcpu,
    long DirtyRingFullExits) : IDisplayable
{
    public long Reads => PerVcpu.Sum(v => v.Reads);
    public long Writes => PerVcpu.Sum(v => v.Writes);
    /// <summary>Accesses made (each touches one page).</summary>
    public long Accesses => Reads + Writes;

    /// <summary>Up to this many passes the table has a column per pass; past it, per-vCPU statistics and a sparkline.</summary>
    public const int PassColumns = 10;

    public Spectre.Console.Rendering.IRenderable ToRenderable() => ToRenderable(full: PassTimes.Count <= PassColumns);

    /// <summary><paramref name="full"/>: every pass (a column per pass up to <see cref="PassColumns"/>, else a row per pass);
    /// otherwise per vCPU min / median / max / total pass time and a sparkline of the passes.</summary>
    public Spectre.Console.Rendering.IRenderable ToRenderable(bool full)
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"{Workload.Name ?? "workload"} on {Backend}: {Elapsed.TotalMilliseconds:0.###} ms")) };
        static string Ms(TimeSpan x) => x.TotalMilliseconds.ToString("0.###", CultureInfo.InvariantCulture);
        if (PassTimes.Count <= PassColumns)
        {
            t.AddColumn("vCPU").AddColumn("role").AddColumn("reads").AddColumn("writes");
            for (int p = 0; p < PassTimes.Count; p++) t.AddColumn($"pass {p} ms");
            foreach (var v in PerVcpu)
            {
                var cells = new List<string> { v.Vcpu.ToString(), v.Role.ToString(), v.Reads.ToString(), v.Writes.ToString() };
                cells.AddRange(v.PassTimes.Select(Ms));
                t.AddRow(cells.ToArray());
            }
            return t;
        }
        if (full)
        {
            // A row per pass: 2000 passes scroll, they do not squeeze into 2000 columns.
            t.AddColumn("pass").AddColumn("wall ms");
            foreach (var v in PerVcpu) t.AddColumn($"vCPU {v.Vcpu} ms");
            for (int p = 0; p < PassTimes.Count; p++)
                t.AddRow([p.ToString(CultureInfo.InvariantCulture), Ms(PassTimes[p]), .. PerVcpu.Select(v => p < v.PassTimes.Count ? Ms(v.PassTimes[p]) : "")]);
            return t;
        }
        t.AddColumn("vCPU").AddColumn("role").AddColumn("reads").AddColumn("writes").AddColumn("passes")
            .AddColumn("min ms").AddColumn("median ms").AddColumn("max ms").AddColumn("total ms").AddColumn("passes over time");
        foreach (var v in PerVcpu)
        {
            var sorted = v.PassTimes.Order().ToArray();
            var median = sorted.Length == 0 ? TimeSpan.Zero : sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
            t.AddRow(v.Vcpu.ToString(), v.Role.ToString(), v.Reads.ToString(), v.Writes.ToString(), v.PassTimes.Count.ToString(),
                sorted.Length == 0 ? "" : Ms(sorted[0]), Ms(median), sorted.Length == 0 ? "" : Ms(sorted[^1]), Ms(v.Total),
                PlotRequest.Sparkline(v.PassTimes.Select(x => x.TotalMilliseconds).ToArray(), 32));
        }
        t.Caption = new TableTitle($"{PassTimes.Count} passes: Show(result, full: true) or result.PassTimes for every one");
        return t;
    }

    public override string ToString()
        => $"{Workload.Name ?? "workload"} on {Backend}: {Vcpus} vCPUs, {Accesses} accesses ({Writes} writes) in {Elapsed.TotalMilliseconds:0.###} ms";
}

/// <summary>Collects per-vCPU, per-pass timings and counts during a run (each vCPU writes only its own row).</summary>
internal sealed class WorkloadRecorder
{
    readonly WorkloadPlan plan;
    readonly TimeSpan[][] vcpuPass;
    readonly long[] reads, writes;
    readonly TimeSpan[] passWall;

    public WorkloadRecorder(WorkloadPlan plan)
    {
        this.plan = plan;
        int passes = plan.Workload.Passes;
        vcpuPass = Enumerable.Range(0, plan.Vcpus).Select(_ => new TimeSpan[passes]).ToArray();
        reads = new long[plan.Vcpus];
        writes = new long[plan.Vcpus];
        passWall = new TimeSpan[passes];
    }

    public void VcpuPass(int vcpu, int pass, TimeSpan elapsed, long passReads, long passWrites)
    {
        vcpuPass[vcpu][pass] = elapsed;
        plan.Progress.Advance();
        reads[vcpu] += passReads;
        writes[vcpu] += passWrites;
    }

    /// <summary>Wall time of a synced pass: from releasing the vCPUs to the last one reaching the sync point.</summary>
    public void Pass(int pass, TimeSpan wall) => passWall[pass] = wall;

    public WorkloadResult Build(Backend backend, TimeSpan elapsed, long ringFullExits)
    {
        var passes = plan.Workload.Passes;
        var wall = new TimeSpan[passes];
        for (int p = 0; p < passes; p++)
            wall[p] = passWall[p] != TimeSpan.Zero ? passWall[p] : vcpuPass.Select(v => v[p]).DefaultIfEmpty().Max();
        var per = Enumerable.Range(0, plan.Vcpus)
            .Select(v => new VcpuResult(v, plan.Slices[v].Role, vcpuPass[v], reads[v], writes[v])).ToArray();
        return new WorkloadResult(plan.Workload, backend, plan.Vcpus, elapsed, wall, per, ringFullExits);
    }
}
