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
    readonly WorkloadPlan _plan;
    readonly TimeSpan[][] _vcpuPass;
    readonly long[] _reads, _writes;
    readonly TimeSpan[] _passWall;

    public WorkloadRecorder(WorkloadPlan plan)
    {
        this._plan = plan;
        int passes = plan.Workload.Passes;
        _vcpuPass = Enumerable.Range(0, plan.Vcpus).Select(_ => new TimeSpan[passes]).ToArray();
        _reads = new long[plan.Vcpus];
        _writes = new long[plan.Vcpus];
        _passWall = new TimeSpan[passes];
    }

    public void VcpuPass(int vcpu, int pass, TimeSpan elapsed, long passReads, long passWrites)
    {
        _vcpuPass[vcpu][pass] = elapsed;
        _plan.Progress.Advance();
        _reads[vcpu] += passReads;
        _writes[vcpu] += passWrites;
    }

    /// <summary>Wall time of a synced pass: from releasing the vCPUs to the last one reaching the sync point.</summary>
    public void Pass(int pass, TimeSpan wall) => _passWall[pass] = wall;

    public WorkloadResult Build(Backend backend, TimeSpan elapsed, long ringFullExits)
    {
        var passes = _plan.Workload.Passes;
        var wall = new TimeSpan[passes];
        for (int p = 0; p < passes; p++)
            wall[p] = _passWall[p] != TimeSpan.Zero ? _passWall[p] : _vcpuPass.Select(v => v[p]).DefaultIfEmpty().Max();
        var per = Enumerable.Range(0, _plan.Vcpus)
            .Select(v => new VcpuResult(v, _plan.Slices[v].Role, _vcpuPass[v], _reads[v], _writes[v])).ToArray();
        return new WorkloadResult(_plan.Workload, backend, _plan.Vcpus, elapsed, wall, per, ringFullExits);
    }
}
