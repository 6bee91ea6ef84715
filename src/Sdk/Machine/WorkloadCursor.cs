using System.Collections.Immutable;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// The access sequence of one vCPU — the definition both backends implement. Per pass, for k in 0 … slice strides − 1:
/// stride index i = k (Sequential), <c>rand() % strides</c> (Random) or the k-th value of a full-period LCG walk
/// (Shuffled: m = next power of two ≥ strides, x₀ = rand() &amp; (m−1), c = (rand()·2+1) &amp; (m−1), x ← (5x + c) mod m,
/// values ≥ strides skipped); then for each access a, for j in 0 … a.Count − 1: gpa = slice gpa + i·Stride + Offset +
/// a.Offset + j·a.Step; write = a.Op, or for Auto the role (Writer/Reader), or for Mixed <c>rand() % 100 &lt; WritePercent</c>.
/// rand() is Park–Miller: s ← s·48271 mod (2³¹−1), starting from (Seed + vcpu) mod (2³¹−1) (1 if that is 0).
/// </summary>
public struct WorkloadCursor
{
    const uint Modulus = 0x7fffffff;
    readonly WorkloadPlan plan;
    readonly VcpuSlice slice;
    readonly ulong sliceGpa;
    readonly long stride, offset;
    readonly AccessOrder order;
    readonly ImmutableArray<StrideAccess> accesses;
    readonly int writePercent;
    uint rng;
    long k;            // strides done this pass
    long strideIndex;  // current stride (within the slice)
    int accessIndex, repeat;
    ulong lcgX, lcgC, lcgMask;
    bool inStride, inPass;

    internal WorkloadCursor(WorkloadPlan plan, VcpuSlice slice)
    {
        this.plan = plan;
        this.slice = slice;
        var w = plan.Workload;
        sliceGpa = slice.Gpa(plan);
        stride = w.Stride;
        offset = w.Offset;
        order = w.Order;
        accesses = plan.Accesses;
        writePercent = w.WritePercent;
        rng = (uint)(((ulong)w.Seed + (ulong)slice.Vcpu) % Modulus);
        if (rng == 0) rng = 1;
        k = strideIndex = 0;
        accessIndex = repeat = 0;
        lcgX = lcgC = lcgMask = 0;
        inStride = inPass = false;
    }

    /// <summary>The vCPU's part of the plan.</summary>
    public readonly VcpuSlice Slice => slice;

    /// <summary>The generator's next value (Park–Miller minimal standard, as the selftests' guest_random_u32).</summary>
    public uint NextRandom()
    {
        rng = (uint)((ulong)rng * 48271 % Modulus);
        return rng;
    }

    /// <summary>Starts a pass: the stride walk restarts; the random generator continues.</summary>
    public void BeginPass()
    {
        k = 0;
        inStride = false;
        inPass = true;
        if (order == AccessOrder.Shuffled && slice.Strides > 0)
        {
            ulong m = 1;
            while (m < (ulong)slice.Strides) m <<= 1;
            lcgMask = m - 1;
            lcgX = NextRandom() & lcgMask;
            lcgC = ((ulong)NextRandom() * 2 + 1) & lcgMask;
        }
    }

    /// <summary>Next access of this pass; false when the pass is done.</summary>
    public bool Next(out ulong gpa, out bool write)
    {
        if (!inPass) { gpa = 0; write = false; return false; }
        if (!inStride)
        {
            if (k >= slice.Strides) { inPass = false; gpa = 0; write = false; return false; }
            strideIndex = order switch
            {
                AccessOrder.Sequential => k,
                AccessOrder.Random => NextRandom() % slice.Strides,
                _ => NextShuffled(),
            };
            k++;
            accessIndex = 0;
            repeat = 0;
            inStride = true;
        }
        var a = accesses[accessIndex];
        gpa = sliceGpa + (ulong)(strideIndex * stride + offset + a.Offset + repeat * a.Step);
        write = a.Op switch
        {
            AccessOp.Write => true,
            AccessOp.Read => false,
            _ => slice.Role switch
            {
                VcpuRole.Writer => true,
                VcpuRole.Reader => false,
                _ => NextRandom() % 100 < (uint)writePercent,
            },
        };
        if (++repeat >= a.Count)
        {
            repeat = 0;
            if (++accessIndex >= accesses.Length) inStride = false;
        }
        return true;
    }

    long NextShuffled()
    {
        // Full-period LCG mod 2^n (Hull–Dobell: c odd, a−1 divisible by 4); cycle-walk past the slice's end.
        while (true)
        {
            var x = lcgX;
            lcgX = (5 * lcgX + lcgC) & lcgMask;
            if (x < (ulong)slice.Strides) return (long)x;
        }
    }
}
