using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// A VM fd: one typed method per VM ioctl (rust-vmm's <c>VmFd</c>), nothing else. The backend
/// (<see cref="KvmMachine"/>) and the raw-ioctl benchmark loops (<see cref="Benchmarks.KvmRawIoctls"/>) both call
/// these, so the baseline a benchmark measures is the backend's own call.
/// </summary>
internal sealed class KvmVmFd : IDisposable
{
    private readonly KvmFd _fd;
    // The hot dirty-log calls use the number and cached requests: no SafeHandle ref-counting, no formatting unless they fail.
    private readonly int _raw;
    private static readonly nuint GetDirtyLogRequest = KvmIoctl.KVM_GET_DIRTY_LOG, ClearDirtyLogRequest = KvmIoctl.KVM_CLEAR_DIRTY_LOG;

    internal KvmVmFd(KvmFd fd)
    {
        _fd = fd;
        _raw = fd.Fd;
    }

    /// <summary>The fd number (for display and inspection).</summary>
    public int Number => _raw;

    public bool IsClosed => _fd.IsClosed;

    /// <summary>The owned handle, for fds derived from this one (stats).</summary>
    internal KvmFd Handle => _fd;

    /// <summary>KVM_SET_USER_MEMORY_REGION: create, move, re-flag, or (size 0) delete a memslot.</summary>
    public void SetUserMemoryRegion(uint slot, uint flags, ulong gpa, ulong size, nint hva)
    {
        var r = new kvm_userspace_memory_region { slot = slot, flags = flags, guest_phys_addr = gpa, memory_size = size, userspace_addr = (ulong)hva };
        // Safe because the struct is a local the kernel only reads, for the duration of the call.
        unsafe { _fd.Ioctl(KvmIoctl.KVM_SET_USER_MEMORY_REGION, &r, $"slot {slot} gpa 0x{gpa:x} size 0x{size:x} flags 0x{flags:x}"); }
    }

    /// <summary>KVM_GET_DIRTY_LOG into a caller bitmap of ceil(pages/64) words (the kernel writes the slot's npages bits).</summary>
    /// <remarks>Unsafe: <paramref name="bitmap"/> must hold the slot's ceil(npages/64) words and stay pinned for the call.</remarks>
    public unsafe void GetDirtyLog(uint slot, ulong* bitmap)
    {
        var log = new kvm_dirty_log { slot = slot, dirty_bitmap = (ulong)bitmap };
        if (Libc.ioctl(_raw, GetDirtyLogRequest, &log) < 0) throw KvmException.Last("KVM_GET_DIRTY_LOG", $"slot {slot}");
    }

    /// <summary>KVM_CLEAR_DIRTY_LOG for [firstPage, firstPage+numPages) with bits taken from bitmap (bit 0 = firstPage).</summary>
    /// <remarks>Unsafe: <paramref name="bitmap"/> must hold ceil(numPages/64) words and stay pinned for the call.</remarks>
    public unsafe void ClearDirtyLog(uint slot, ulong firstPage, uint numPages, ulong* bitmap)
    {
        var c = new kvm_clear_dirty_log { slot = slot, first_page = firstPage, num_pages = numPages, dirty_bitmap = (ulong)bitmap };
        if (Libc.ioctl(_raw, ClearDirtyLogRequest, &c) < 0)
            throw KvmException.Last("KVM_CLEAR_DIRTY_LOG", $"slot {slot} first_page {firstPage} num_pages {numPages}");
    }

    /// <summary>KVM_ENABLE_CAP with args[0] = <paramref name="arg0"/>.</summary>
    public void EnableCap(int cap, ulong arg0)
    {
        var c = new kvm_enable_cap { cap = (uint)cap };
        // Safe because args has 4 elements and the struct is a local the kernel only reads, for the duration of the call.
        unsafe
        {
            c.args[0] = arg0;
            _fd.Ioctl(KvmIoctl.KVM_ENABLE_CAP, &c, $"{KvmCap.Name(cap)} args[0]=0x{arg0:x}");
        }
    }

    /// <summary>KVM_RESET_DIRTY_RINGS: re-protect harvested pages and recycle their entries; returns how many KVM reset.</summary>
    public int ResetDirtyRings() => _fd.Ioctl(KvmIoctl.KVM_RESET_DIRTY_RINGS);

    /// <summary>KVM_CREATE_VCPU: the new vCPU's fd (owned by the caller).</summary>
    public KvmFd CreateVcpu(int index) => _fd.IoctlFd(KvmIoctl.KVM_CREATE_VCPU, (ulong)index, $"vcpu{index}");

    public void Dispose() => _fd.Dispose();
}
