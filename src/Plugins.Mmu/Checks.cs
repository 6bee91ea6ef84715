using System.Globalization;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Mmu;

/// <summary>Option checks shared by the tests: each failure names the value and what is allowed, before any VM exists.</summary>
internal static class Checks
{
    /// <summary>Most vCPUs the chosen backend allows: KVM_CAP_MAX_VCPUS on KVM, x86's KVM_MAX_VCPUS on the simulator.</summary>
    public static int MaxVcpus(Backend backend)
    {
        if (backend != Backend.Sim && Vm.IsKvmUsable(out _)) return KvmSystem.Probe().MaxVcpus;
        return VmOptions.MaxVcpusDefault;
    }

    public static void Vcpus(int vcpus, Backend backend, string option = "vcpus")
    {
        int max = MaxVcpus(backend);
        if (vcpus < 1 || vcpus > max)
            throw new ArgumentOutOfRangeException(option,
                $"{option} must be 1 … {max} ({(backend != Backend.Sim && Vm.IsKvmUsable(out _) ? "KVM_CAP_MAX_VCPUS on this host" : "KVM_MAX_VCPUS on x86")}); got {vcpus}");
    }

    public static void MultipleOfBackingPage(Size size, Backing backing, string option)
    {
        long page = backing.PageSize();
        if (size.Bytes <= 0)
            throw new ArgumentOutOfRangeException(option, $"{option} must be positive; got {size}");
        if (size.Bytes % page != 0)
            throw new ArgumentException(
                $"{option} {size} ({size.Bytes} bytes) is not a multiple of the {backing.Name()} backing's page size {new Size(page)}; " +
                $"use {new Size(Math.Max(page, size.Bytes / page * page))} or {new Size((size.Bytes + page - 1) / page * page)}", option);
    }

    public static void GuestPhysBits(int? bits)
    {
        if (bits is { } b && (b < 32 || b > 52))
            throw new ArgumentOutOfRangeException("guestPhysBits", $"guest physical address bits must be 32 … 52 (x86 guest modes PA-bits:32 … 52, VA-bits:48, 4K pages); got {b}");
    }

    public static void PhysOffset(ulong? gpa, Size size, Backing backing, int? guestPhysBits)
    {
        if (gpa is not { } g) return;
        long page = backing.PageSize();
        if (g % (ulong)page != 0)
            throw new ArgumentException($"guest physical test memory offset 0x{g:x} is not aligned to the {backing.Name()} backing's page size {new Size(page)}; " +
                $"use 0x{g / (ulong)page * (ulong)page:x}", "physOffset");
        int bits = guestPhysBits ?? HostInfo.PhysAddressBits;
        var end = (UInt128)g + (ulong)size.Bytes;
        if (end > (UInt128)1 << bits)
            throw new ArgumentOutOfRangeException("physOffset",
                $"test memory [0x{g:x}, 0x{end:x}) does not fit in a {bits}-bit guest-physical space (ends at 0x{(UInt128)1 << bits:x})");
    }

    public static void BackendUsable(Backend backend)
    {
        if (backend == Backend.Kvm && !Vm.IsKvmUsable(out var why))
            throw new PlatformNotSupportedException($"the KVM backend is not usable here: {why}. Use Backend.Sim (or Backend.Auto to fall back to it).");
    }

    /// <summary>Dirty ring bytes per vCPU: a power of two from 4 KiB to what KVM allows (KVM_CAP_DIRTY_LOG_RING; 1 MiB without KVM).</summary>
    public static void RingBytes(long bytes, Backend backend)
    {
        long max = VmOptions.DirtyRingMaxEntries * (long)VmOptions.DirtyRingEntryBytes;
        if (backend != Backend.Sim && Vm.IsKvmUsable(out _) && KvmSystem.Probe().DirtyRingMaxBytes is > 0 and var k) max = Math.Min(max, k);
        if (bytes < 4096 || bytes > max || (bytes & (bytes - 1)) != 0)
            throw new ArgumentOutOfRangeException("ringBytes",
                $"dirty ring size must be a power of two from 4096 to {max} bytes ({4096 / VmOptions.DirtyRingEntryBytes} … {max / VmOptions.DirtyRingEntryBytes} entries of {VmOptions.DirtyRingEntryBytes} bytes); got {bytes.ToString(CultureInfo.InvariantCulture)}");
    }

    public static string Seconds(TimeSpan t)
    {
        long ns = (long)(t.Ticks * 100L);
        return $"{ns / 1_000_000_000}.{ns % 1_000_000_000:D9}s";
    }
}
