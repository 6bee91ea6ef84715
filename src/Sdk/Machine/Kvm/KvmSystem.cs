using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>One KVM capability as KVM_CHECK_EXTENSION reports it (0 = absent; some return a size or count).</summary>
public sealed record KvmCapability(string Name, int Number, int Value);

/// <summary>What this host's KVM can do: the data `virtlab doctor` prints (the host facts come from <see cref="HostInfo"/>). Obtain with <see cref="Probe"/>.</summary>
public sealed class KvmSystem
{
    /// <summary>The capabilities the project depends on, queried on /dev/kvm.</summary>
    public static readonly int[] InterestingCaps =
    {
        KvmCap.USER_MEMORY, KvmCap.SYNC_MMU, KvmCap.NR_VCPUS, KvmCap.MAX_VCPUS, KvmCap.MAX_VCPU_ID, KvmCap.NR_MEMSLOTS,
        KvmCap.MULTI_ADDRESS_SPACE, KvmCap.READONLY_MEM, KvmCap.IMMEDIATE_EXIT, KvmCap.MANUAL_DIRTY_LOG_PROTECT2,
        KvmCap.DIRTY_LOG_RING, KvmCap.DIRTY_LOG_RING_ACQ_REL, KvmCap.DIRTY_LOG_RING_WITH_BITMAP,
        KvmCap.BINARY_STATS_FD, KvmCap.HALT_POLL, KvmCap.X86_DISABLE_EXITS, KvmCap.EXT_CPUID,
    };

    /// <summary>Whether /dev/kvm opened and answered KVM_GET_API_VERSION with 12.</summary>
    public bool Usable { get; internal init; }
    /// <summary>Why KVM is not usable (empty when it is).</summary>
    public string Reason { get; internal init; } = "";
    /// <summary>KVM_GET_API_VERSION's answer.</summary>
    public int ApiVersion { get; internal init; }
    /// <summary>KVM_GET_VCPU_MMAP_SIZE: bytes of a vCPU's kvm_run mapping.</summary>
    public int VcpuMmapSize { get; internal init; }
    /// <summary>KVM_CHECK_EXTENSION of every capability VirtLab asks about.</summary>
    public IReadOnlyList<KvmCapability> Capabilities { get; internal init; } = [];
    /// <summary>Module → parameter → value, from /sys/module/kvm*/parameters/.</summary>
    public IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> ModuleParameters { get; internal init; } =
        new Dictionary<string, IReadOnlyDictionary<string, string>>();
    /// <summary>/sys/kernel/mm/transparent_hugepage/enabled.</summary>
    public string ThpEnabled { get; internal init; } = "";
    /// <summary>/sys/kernel/mm/transparent_hugepage/defrag.</summary>
    public string ThpDefrag { get; internal init; } = "";
    /// <summary>Every hugetlb pool (<see cref="HostInfo.AllHugePools"/>: total, free, reserved = resv_hugepages, surplus).</summary>
    public IReadOnlyList<HostInfo.HugePool> HugePages { get; internal init; } = [];
    /// <summary>Kernel release (uname -r).</summary>
    public string Kernel { get; internal init; } = "";
    /// <summary>CPU model name.</summary>
    public string Cpu { get; internal init; } = "";
    /// <summary>Logical CPUs of the host.</summary>
    public int LogicalCpus { get; internal init; }
    /// <summary>Hardware virtualization the host CPU advertises ("vmx", "svm" or "none": e.g. PVM's emulated guests).</summary>
    public string HardwareVirtualization { get; internal init; } = "";

    /// <summary>KVM_CHECK_EXTENSION's value for <paramref name="cap"/> (a <see cref="KvmCap"/> number), 0 when unknown.</summary>
    public int Cap(int cap) => Capabilities.FirstOrDefault(c => c.Number == cap)?.Value ?? 0;
    /// <summary>Most vCPUs per VM (KVM_CAP_MAX_VCPUS, else KVM_CAP_NR_VCPUS).</summary>
    public int MaxVcpus => Cap(KvmCap.MAX_VCPUS) > 0 ? Cap(KvmCap.MAX_VCPUS) : Math.Max(Cap(KvmCap.NR_VCPUS), 4);
    /// <summary>Memslots per address space (KVM_CAP_NR_MEMSLOTS).</summary>
    public int NrMemslots => Cap(KvmCap.NR_MEMSLOTS);
    /// <summary>Largest dirty ring in bytes (KVM_CAP_DIRTY_LOG_RING_ACQ_REL or KVM_CAP_DIRTY_LOG_RING), 0 without one.</summary>
    public int DirtyRingMaxBytes => Cap(KvmCap.DIRTY_LOG_RING_ACQ_REL) > 0 ? Cap(KvmCap.DIRTY_LOG_RING_ACQ_REL) : Cap(KvmCap.DIRTY_LOG_RING);

    private static readonly Lazy<KvmSystem> Cached = new(ProbeNow);

    /// <summary>Probe /dev/kvm and the host once (cached): capabilities, module parameters, THP, hugetlb, kernel, CPU.</summary>
    public static KvmSystem Probe() => Cached.Value;

    /// <summary>Probe again, ignoring the cache (module parameters and hugetlb reservations can change).</summary>
    public static KvmSystem ProbeNow()
    {
        bool usable = false;
        string reason = "";
        int api = 0, mmapSize = 0;
        var caps = new List<KvmCapability>();
        try
        {
            using var kvm = KvmDevice.Open();
            api = kvm.ApiVersion();
            if (api != KvmConst.KVM_API_VERSION)
                reason = $"KVM_GET_API_VERSION returned {api}, expected {KvmConst.KVM_API_VERSION}";
            else
            {
                foreach (var c in InterestingCaps) caps.Add(new KvmCapability(KvmCap.Name(c), c, kvm.CheckExtension(c)));
                mmapSize = kvm.VcpuMmapSize();
                usable = true;
            }
        }
        catch (KvmException e)
        {
            reason = e.Errno == Errno.ENOENT ? "/dev/kvm does not exist (no KVM module loaded, or not exposed to this container)"
                   : e.Errno == Errno.EACCES ? "/dev/kvm: permission denied (add the user to the kvm group or run as root)"
                   : e.Message;
        }

        return new KvmSystem
        {
            Usable = usable,
            Reason = reason,
            ApiVersion = api,
            VcpuMmapSize = mmapSize,
            Capabilities = caps,
            ModuleParameters = HostInfo.KvmModuleParameters,
            ThpEnabled = HostInfo.ThpMode,
            ThpDefrag = HostInfo.ThpDefrag,
            HugePages = HostInfo.AllHugePools(),
            Kernel = HostInfo.KernelRelease ?? "",
            Cpu = HostInfo.CpuModel ?? "unknown",
            LogicalCpus = Environment.ProcessorCount,
            HardwareVirtualization = HostInfo.HardwareVirtualization,
        };
    }

    /// <inheritdoc/>

    public override string ToString() =>
        Usable ? $"KVM API {ApiVersion}, max vCPUs {MaxVcpus}, memslots {NrMemslots}, kernel {Kernel}" : $"KVM unusable: {Reason}";
}
