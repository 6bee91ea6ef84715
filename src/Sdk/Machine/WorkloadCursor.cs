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
    readonly WorkloadPlan _plan;
    readonly VcpuSlice _slice;
    readonly ulong _sliceGpa;
    readonly long _stride, _offset;
    readonly AccessOrder _order;
    readonly ImmutableArray<StrideAccess> _accesses;
    readonly int _writePercent;
    uint _rng;
    long _k;            // strides done this pass
    long _strideIndex;  // current stride (within the slice)
    int _accessIndex, _repeat;
    ulong _lcgX, _lcgC, _lcgMask;
    bool _inStride, _inPass;

    internal WorkloadCursor(WorkloadPlan plan, VcpuSlice slice)
    {
        this._plan = plan;
        this._slice = slice;
        var w = plan.Workload;
        _sliceGpa = slice.Gpa(plan);
        _stride = w.Stride;
        _offset = w.Offset;
        _order = w.Order;
        _accesses = plan.Accesses;
        _writePercent = w.WritePercent;
        _rng = (uint)(((ulong)w.Seed + (ulong)slice.Vcpu) % Modulus);
        if (_rng == 0) _rng = 1;
        _k = _strideIndex = 0;
        _accessIndex = _repeat = 0;
        _lcgX = _lcgC = _lcgMask = 0;
        _inStride = _inPass = false;
    }

    /// <summary>The vCPU's part of the plan.</summary>
    public readonly VcpuSlice Slice => _slice;

    /// <summary>The generator's next value (Park–Miller minimal standard, as the selftests' guest_random_u32).</summary>
    public uint NextRandom()
    {
        _rng = (uint)((ulong)_rng * 48271 % Modulus);
        return _rng;
    }

    /// <summary>Starts a pass: the stride walk restarts; the random generator continues.</summary>
    public void BeginPass()
    {
        _k = 0;
        _inStride = false;
        _inPass = true;
        if (_order == AccessOrder.Shuffled && _slice.Strides > 0)
        {
            ulong m = 1;
            while (m < (ulong)_slice.Strides) m <<= 1;
            _lcgMask = m - 1;
            _lcgX = NextRandom() & _lcgMask;
            _lcgC = ((ulong)NextRandom() * 2 + 1) & _lcgMask;
        }
    }

    /// <summary>Next access of this pass; false when the pass is done.</summary>
    public bool Next(out ulong gpa, out bool write)
    {
        if (!_inPass) { gpa = 0; write = false; return false; }
        if (!_inStride)
        {
            if (_k >= _slice.Strides) { _inPass = false; gpa = 0; write = false; return false; }
            _strideIndex = _order switch
            {
                AccessOrder.Sequential => _k,
                AccessOrder.Random => NextRandom() % _slice.Strides,
                _ => NextShuffled(),
            };
            _k++;
            _accessIndex = 0;
            _repeat = 0;
            _inStride = true;
        }
        var a = _accesses[_accessIndex];
        gpa = _sliceGpa + (ulong)(_strideIndex * _stride + _offset + a.Offset + _repeat * a.Step);
        write = a.Op switch
        {
            AccessOp.Write => true,
            AccessOp.Read => false,
            _ => _slice.Role switch
            {
                VcpuRole.Writer => true,
                VcpuRole.Reader => false,
                _ => NextRandom() % 100 < (uint)_writePercent,
            },
        };
        if (++_repeat >= a.Count)
        {
            _repeat = 0;
            if (++_accessIndex >= _accesses.Length) _inStride = false;
        }
        return true;
    }

    long NextShuffled()
    {
        // Full-period LCG mod 2^n (Hull–Dobell: c odd, a−1 divisible by 4); cycle-walk past the slice's end.
        while (true)
        {
            var x = _lcgX;
            _lcgX = (5 * _lcgX + _lcgC) & _lcgMask;
            if (x < (ulong)_slice.Strides) return (long)x;
        }
    }
}
