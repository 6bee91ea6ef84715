using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// KVM_GET_SUPPORTED_CPUID, given to every vCPU with KVM_SET_CPUID2: without a CPUID that reports long
/// mode (0x80000001.EDX.LM), KVM rejects EFER.LME in KVM_SET_SREGS.
/// </summary>
internal static class KvmCpuid
{
    private static byte[]? _cached;
    private static readonly object Gate = new();

    /// <summary>KVM_GET_SUPPORTED_CPUID, asked once per process (it does not change while the module is loaded).</summary>
    public static byte[] Supported(KvmDevice kvm)
    {
        lock (Gate) return _cached ??= kvm.GetSupportedCpuid();
    }

    public static kvm_cpuid_entry2? Find(byte[] cpuid, uint function, uint index = 0)
    {
        var header = MemoryMarshal.Read<kvm_cpuid2>(cpuid);
        var entries = MemoryMarshal.Cast<byte, kvm_cpuid_entry2>(cpuid.AsSpan(Unsafe.SizeOf<kvm_cpuid2>()));
        foreach (var e in entries[..(int)Math.Min(header.nent, (uint)entries.Length)])
            if (e.function == function && e.index == index) return e;
        return null;
    }

    /// <summary>Guest MAXPHYADDR (CPUID 0x80000008 EAX[7:0]); 36 when the leaf is absent, as the SDM says.</summary>
    public static int PhysAddrBits(byte[] cpuid) => Find(cpuid, 0x8000_0008) is { } e ? (int)(e.eax & 0xFF) : 36;

    /// <summary>Whether the guest may use 1 GiB pages (CPUID 0x80000001 EDX bit 26, PDPE1GB).</summary>
    public static bool Has1GPages(byte[] cpuid) => Find(cpuid, 0x8000_0001) is { } e && (e.edx & (1u << 26)) != 0;
}
