using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// KVM_GET_SUPPORTED_CPUID, given to every vCPU with KVM_SET_CPUID2: without a CPUID that reports long
/// mode (0x80000001.EDX.LM), KVM rejects EFER.LME in KVM_SET_SREGS.
/// </summary>
internal static unsafe class KvmCpuid
{
    private static byte[]? _cached;
    private static readonly object Gate = new();

    /// <summary>The raw struct kvm_cpuid2 + entries, as KVM returned it.</summary>
    public static byte[] Supported(KvmFd kvm)
    {
        lock (Gate)
        {
            if (_cached != null) return _cached;
            for (int n = 64; ; n *= 2)
            {
                var buf = new byte[sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2)];
                fixed (byte* p = buf)
                {
                    ((kvm_cpuid2*)p)->nent = (uint)n;
                    int r = Libc.ioctl(kvm.Fd, KvmIoctl.KVM_GET_SUPPORTED_CPUID, p);
                    if (r < 0 && Libc.Errno == Errno.E2BIG && n < 4096) continue; // table larger than our guess
                    if (r < 0) throw KvmException.Last("KVM_GET_SUPPORTED_CPUID");
                    int used = sizeof(kvm_cpuid2) + (int)((kvm_cpuid2*)p)->nent * sizeof(kvm_cpuid_entry2);
                    return _cached = buf[..used];
                }
            }
        }
    }

    public static kvm_cpuid_entry2? Find(byte[] cpuid, uint function, uint index = 0)
    {
        fixed (byte* p = cpuid)
        {
            var e = (kvm_cpuid_entry2*)(p + sizeof(kvm_cpuid2));
            for (int i = 0; i < ((kvm_cpuid2*)p)->nent; i++)
                if (e[i].function == function && e[i].index == index) return e[i];
        }
        return null;
    }

    /// <summary>Guest MAXPHYADDR (CPUID 0x80000008 EAX[7:0]); 36 when the leaf is absent, as the SDM says.</summary>
    public static int PhysAddrBits(byte[] cpuid) => Find(cpuid, 0x8000_0008) is { } e ? (int)(e.eax & 0xFF) : 36;

    /// <summary>Whether the guest may use 1 GiB pages (CPUID 0x80000001 EDX bit 26, PDPE1GB).</summary>
    public static bool Has1GPages(byte[] cpuid) => Find(cpuid, 0x8000_0001) is { } e && (e.edx & (1u << 26)) != 0;

    public static void SetOn(KvmVcpu vcpu, byte[] cpuid)
    {
        fixed (byte* p = cpuid) vcpu.Fd.Ioctl(KvmIoctl.KVM_SET_CPUID2, p);
    }
}
