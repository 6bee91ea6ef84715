using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// A vCPU's dirty ring (KVM_CAP_DIRTY_LOG_RING): an array of struct kvm_dirty_gfn shared with KVM at page
/// offset KVM_DIRTY_LOG_PAGE_OFFSET of the vCPU fd. KVM publishes an entry by setting DIRTY (release);
/// we read flags with acquire, copy slot/offset, then hand the entry back by setting RESET (release).
/// KVM_RESET_DIRTY_RINGS on the VM fd then re-protects those pages and recycles the entries.
/// </summary>
internal sealed class KvmDirtyRing : IDisposable
{
    private readonly KvmMapping _map;
    private readonly uint _mask;
    private uint _fetchIndex; // our consumer index, free-running like the kernel's
    private readonly object _lock = new();

    public int Entries { get; }

    public KvmDirtyRing(KvmVcpu vcpu, int bytes)
    {
        Entries = bytes / System.Runtime.CompilerServices.Unsafe.SizeOf<kvm_dirty_gfn>();
        _mask = (uint)Entries - 1;
        _map = new KvmMapping(vcpu.Fd, (nuint)bytes, Libc.PROT_READ | Libc.PROT_WRITE,
            KvmConst.KVM_DIRTY_LOG_PAGE_OFFSET * Environment.SystemPageSize, $"dirty ring of vCPU {vcpu.Index}");
    }

    /// <summary>Collect every published entry, in order; returns how many were collected.</summary>
    public int Harvest(Action<uint, ulong> sink)
    {
        // Safe because the ring mapping is Entries entries long (a power of two) and every index is masked into it;
        // Pointer throws once the vCPU is disposed.
        lock (_lock) unsafe
        {
            var ring = (kvm_dirty_gfn*)_map.Pointer;
            int n = 0;
            while (true)
            {
                var e = &ring[_fetchIndex & _mask];
                uint flags = Volatile.Read(ref e->flags); // acquire: slot/offset below are valid once DIRTY is seen
                if ((flags & KvmConst.KVM_DIRTY_GFN_F_DIRTY) == 0) break;
                sink(e->slot, e->offset);
                Volatile.Write(ref e->flags, KvmConst.KVM_DIRTY_GFN_F_RESET); // release to KVM
                _fetchIndex++;
                n++;
            }
            return n;
        }
    }

    private DirtyGfn[]? _scratch;

    /// <summary>
    /// Collect every published entry into <paramref name="into"/>, in order; returns how many. The entries go through a
    /// scratch array and are appended in one AddRange: List&lt;DirtyGfn&gt; is a framework generic over an SDK struct, which
    /// no ReadyToRun image holds, so a per-entry Add would run Tier-0 code until the background tiering caught up —
    /// inside a recipe's first timed harvest (measured 0.18 ms against 0.07 ms later).
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // fully optimized from the warm-up's call, not ReadyToRun code until tier 1
    public int Harvest(List<DirtyGfn> into)
    {
        lock (_lock) unsafe
        {
            // Safe as in Harvest(Action): every index is masked into the mapping, which Pointer checks is still live.
            var ring = (kvm_dirty_gfn*)_map.Pointer;
            var buf = _scratch ??= new DirtyGfn[Entries];
            int n = 0;
            while (n < buf.Length)
            {
                var e = &ring[_fetchIndex & _mask];
                uint flags = Volatile.Read(ref e->flags); // acquire: slot/offset below are valid once DIRTY is seen
                if ((flags & KvmConst.KVM_DIRTY_GFN_F_DIRTY) == 0) break;
                buf[n++] = new DirtyGfn(e->slot, e->offset);
                Volatile.Write(ref e->flags, KvmConst.KVM_DIRTY_GFN_F_RESET); // release to KVM
                _fetchIndex++;
            }
            if (n > 0) into.AddRange(new ArraySegment<DirtyGfn>(buf, 0, n));
            return n;
        }
    }

    public void Dispose() => _map.Dispose();
}
