using System.Collections.Immutable;

namespace VirtLab.Sdk.Machine;

/// <summary>A vCPU's share of a planned workload: strides [<see cref="FirstStride"/>, +<see cref="Strides"/>) of the range.</summary>
public readonly record struct VcpuSlice(int Vcpu, long FirstStride, long Strides, VcpuRole Role)
{
    /// <summary>Guest-physical address of the slice's first stride.</summary>
    public ulong Gpa(WorkloadPlan plan) => plan.Gpa + (ulong)(FirstStride * plan.Workload.Stride);
}

/// <summary>
/// A <see cref="Workload"/> checked and resolved against a VM: the gpa range, the number of strides, each vCPU's slice.
/// Both backends run exactly the accesses <see cref="Cursor"/> yields.
/// </summary>
public sealed class WorkloadPlan
{
    /// <summary>Advanced once per vCPU per pass (see <see cref="VirtLab.Sdk.Measure.Progress"/>).</summary>
    internal VirtLab.Sdk.Measure.ProgressReporter Progress { get; set; } = VirtLab.Sdk.Measure.ProgressReporter.None;

    internal WorkloadPlan(Workload workload, int vcpus, ulong gpa, long length, IReadOnlyList<MemSlot> slots)
    {
        Workload = workload;
        Vcpus = vcpus;
        Gpa = gpa;
        Length = length;
        Slots = slots;
        Strides = length / workload.Stride;
        Accesses = workload.EffectiveAccesses;
        foreach (var a in Accesses) AccessesPerStride += a.Count;
        var slices = new VcpuSlice[vcpus];
        for (int v = 0; v < vcpus; v++)
        {
            long first = 0, count = Strides;
            if (workload.Sharing == VcpuSharing.Partition)
            {
                first = Strides * v / vcpus;
                count = Strides * (v + 1) / vcpus - first;
            }
            slices[v] = new VcpuSlice(v, first, count, workload.RoleOf(v));
        }
        Slices = slices;
    }

    /// <summary>The workload planned.</summary>
    public Workload Workload { get; }
    /// <summary>vCPUs the work is split over.</summary>
    public int Vcpus { get; }
    /// <summary>Start of the range.</summary>
    public ulong Gpa { get; }
    /// <summary>Bytes of the slot the workload covers.</summary>
    public long Length { get; }
    /// <summary>Guest-physical end of the covered range (exclusive).</summary>
    public ulong EndGpa => Gpa + (ulong)Length;
    /// <summary>Strides in the whole range.</summary>
    public long Strides { get; }
    /// <summary>The accesses made in every stride.</summary>
    public ImmutableArray<StrideAccess> Accesses { get; }
    /// <summary>Number of accesses per stride.</summary>
    public long AccessesPerStride { get; }
    /// <summary>Slots the range covers, in gpa order.</summary>
    public IReadOnlyList<MemSlot> Slots { get; }
    /// <summary>Each vCPU's part.</summary>
    public IReadOnlyList<VcpuSlice> Slices { get; }

    /// <summary>Accesses vCPU <paramref name="vcpu"/> makes per pass.</summary>
    public long AccessesPerPass(int vcpu) => Slices[vcpu].Strides * AccessesPerStride;

    /// <summary>The deterministic access sequence of vCPU <paramref name="vcpu"/> (call <see cref="WorkloadCursor.BeginPass"/> before each pass).</summary>
    public WorkloadCursor Cursor(int vcpu) => new(this, Slices[vcpu]);

    /// <summary>Pages (gfn − slot base, per slot id) that the given passes write — what a dirty log must report.</summary>
    public IReadOnlyDictionary<int, DirtyBitmap> ExpectedWrites(int passes = -1)
    {
        if (passes < 0) passes = Workload.Passes;
        var result = Slots.ToDictionary(s => s.Id, s => new DirtyBitmap(s.Pages));
        for (int v = 0; v < Vcpus; v++)
        {
            var c = Cursor(v);
            for (int p = 0; p < passes; p++)
            {
                c.BeginPass();
                while (c.Next(out var gpa, out var write))
                {
                    if (!write) continue;
                    foreach (var s in Slots)
                        if (s.Contains(gpa)) { result[s.Id].Set((long)((gpa - s.Gpa) >> 12)); break; }
                }
            }
        }
        return result;
    }
}
