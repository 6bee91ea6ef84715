using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// /dev/kvm: one typed method per system ioctl (rust-vmm's <c>Kvm</c>). <see cref="KvmSystem"/> probes through it,
/// <see cref="KvmMachine"/> creates its VM through it.
/// </summary>
internal sealed class KvmDevice : IDisposable
{
    private readonly KvmFd _fd;

    private KvmDevice(KvmFd fd) => _fd = fd;

    public static KvmDevice Open() => new(KvmFd.OpenDevKvm());

    /// <summary>KVM_GET_API_VERSION (12 on every kernel since 2.6.22).</summary>
    public int ApiVersion() => _fd.Ioctl(KvmIoctl.KVM_GET_API_VERSION);

    /// <summary>KVM_CHECK_EXTENSION: 0 when absent; some capabilities answer a size or a count. Errors read as 0.</summary>
    public int CheckExtension(int cap) => Math.Max(Libc.ioctl(_fd.Fd, KvmIoctl.KVM_CHECK_EXTENSION, (ulong)cap), 0);

    /// <summary>KVM_GET_VCPU_MMAP_SIZE: the size of a vCPU fd's mmap (struct kvm_run and what follows).</summary>
    public int VcpuMmapSize() => _fd.Ioctl(KvmIoctl.KVM_GET_VCPU_MMAP_SIZE);

    /// <summary>KVM_GET_SUPPORTED_CPUID: the raw struct kvm_cpuid2 + entries (grown while KVM answers E2BIG).</summary>
    public byte[] GetSupportedCpuid()
    {
        for (int n = 64; ; n *= 2)
        {
            var buf = new byte[Unsafe.SizeOf<kvm_cpuid2>() + n * Unsafe.SizeOf<kvm_cpuid_entry2>()];
            MemoryMarshal.Write(buf, new kvm_cpuid2 { nent = (uint)n });
            int r;
            // Safe because the kernel writes at most nent entries after the header, and nent is what buf holds.
            unsafe { fixed (byte* p = buf) r = Libc.ioctl(_fd.Fd, KvmIoctl.KVM_GET_SUPPORTED_CPUID, p); }
            if (r < 0 && Libc.Errno == Errno.E2BIG && n < 4096) continue; // table larger than our guess
            if (r < 0) throw KvmException.Last("KVM_GET_SUPPORTED_CPUID");
            int used = Unsafe.SizeOf<kvm_cpuid2>() + (int)MemoryMarshal.Read<kvm_cpuid2>(buf).nent * Unsafe.SizeOf<kvm_cpuid_entry2>();
            return buf[..used];
        }
    }

    /// <summary>KVM_CREATE_VM (type 0: the default VM type).</summary>
    public KvmVmFd CreateVm() => new(_fd.IoctlFd(KvmIoctl.KVM_CREATE_VM, 0, "vm"));

    public void Dispose() => _fd.Dispose();
}
