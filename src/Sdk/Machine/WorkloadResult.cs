using System.Collections.Immutable;

namespace VirtLab.Sdk.Machine;

/// <summary>One vCPU's part of a run.</summary>
public sealed record VcpuResult(int Vcpu, VcpuRole Role, IReadOnlyList<TimeSpan> PassTimes, long Reads, long Writes)
{
    /// <summary>Time of all passes.</summary>
    public TimeSpan Total => PassTimes.Aggregate(TimeSpan.Zero, (a, b) => a + b);
    /// <summary>Reads plus writes, all vCPUs.</summary>
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
    long DirtyRingFullExits)
{
    /// <summary>Reads of all vCPUs.</summary>
    public long Reads => PerVcpu.Sum(v => v.Reads);
    /// <summary>Writes of all vCPUs.</summary>
    public long Writes => PerVcpu.Sum(v => v.Writes);
    /// <summary>Accesses made (each touches one page).</summary>
    public long Accesses => Reads + Writes;

    /// <inheritdoc/>

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
