using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>One KVM capability as KVM_CHECK_EXTENSION reports it (0 = absent; some return a size or count).</summary>
public sealed record KvmCapability(string Name, int Number, int Value);

/// <summary>What this host's KVM can do: the data `virtlab doctor` prints. Obtain with <see cref="Probe"/>.</summary>
public sealed class KvmSystem : IDisplayable
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
    public bool Usable { get; private init; }
    /// <summary>Why KVM is not usable (empty when it is).</summary>
    public string Reason { get; private init; } = "";
    /// <summary>KVM_GET_API_VERSION's answer.</summary>
    public int ApiVersion { get; private init; }
    /// <summary>KVM_GET_VCPU_MMAP_SIZE: bytes of a vCPU's kvm_run mapping.</summary>
    public int VcpuMmapSize { get; private init; }
    /// <summary>KVM_CHECK_EXTENSION of every capability VirtLab asks about.</summary>
    public IReadOnlyList<KvmCapability> Capabilities { get; private init; } = [];
    /// <summary>Module → parameter → value, from /sys/module/kvm*/parameters/.</summary>
    public IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> ModuleParameters { get; private init; } =
        new Dictionary<string, IReadOnlyDictionary<string, string>>();
    /// <summary>/sys/kernel/mm/transparent_hugepage/enabled.</summary>
    public string ThpEnabled { get; private init; } = "";
    /// <summary>/sys/kernel/mm/transparent_hugepage/defrag.</summary>
    public string ThpDefrag { get; private init; } = "";
    /// <summary>Every hugetlb pool (<see cref="HostInfo.AllHugePools"/>: total, free, reserved = resv_hugepages, surplus).</summary>
    public IReadOnlyList<HostInfo.HugePool> HugePages { get; private init; } = [];
    /// <summary>Kernel release (uname -r).</summary>
    public string Kernel { get; private init; } = "";
    /// <summary>CPU model name.</summary>
    public string Cpu { get; private init; } = "";
    /// <summary>Logical CPUs of the host.</summary>
    public int LogicalCpus { get; private init; }
    /// <summary>Hardware virtualization the host CPU advertises ("vmx", "svm" or "none": e.g. PVM's emulated guests).</summary>
    public string HardwareVirtualization { get; private init; } = "";

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
            using var kvm = KvmFd.OpenDevKvm();
            api = kvm.Ioctl(KvmIoctl.KVM_GET_API_VERSION);
            if (api != KvmConst.KVM_API_VERSION)
                reason = $"KVM_GET_API_VERSION returned {api}, expected {KvmConst.KVM_API_VERSION}";
            else
            {
                foreach (var c in InterestingCaps)
                {
                    int v = Libc.ioctl(kvm.Fd, KvmIoctl.KVM_CHECK_EXTENSION, (ulong)c);
                    caps.Add(new KvmCapability(KvmCap.Name(c), c, Math.Max(v, 0)));
                }
                mmapSize = kvm.Ioctl(KvmIoctl.KVM_GET_VCPU_MMAP_SIZE);
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
            ModuleParameters = ReadModuleParameters(),
            ThpEnabled = HostInfo.ThpMode,
            ThpDefrag = Bracketed(ReadText("/sys/kernel/mm/transparent_hugepage/defrag")),
            HugePages = HostInfo.AllHugePools(),
            Kernel = ReadText("/proc/sys/kernel/osrelease"),
            Cpu = CpuInfo("model name") ?? "unknown",
            LogicalCpus = Environment.ProcessorCount,
            HardwareVirtualization = CpuFlags() is var f && f.Contains("vmx") ? "vmx" : f.Contains("svm") ? "svm" : "none",
        };
    }

    private static string ReadText(string path)
    {
        try { return File.ReadAllText(path).Trim(); } catch { return ""; }
    }

    // "always [madvise] never" → "madvise"
    private static string Bracketed(string s)
    {
        int a = s.IndexOf('['), b = s.IndexOf(']');
        return a >= 0 && b > a ? s[(a + 1)..b] : s;
    }

    private static IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> ReadModuleParameters()
    {
        var result = new SortedDictionary<string, IReadOnlyDictionary<string, string>>();
        try
        {
            foreach (var mod in Directory.GetDirectories("/sys/module", "kvm*"))
            {
                var dir = Path.Combine(mod, "parameters");
                if (!Directory.Exists(dir)) continue;
                var ps = new SortedDictionary<string, string>();
                foreach (var p in Directory.GetFiles(dir)) ps[Path.GetFileName(p)] = ReadText(p);
                result[Path.GetFileName(mod)] = ps;
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return result;
    }

    private static string? CpuInfo(string key)
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/cpuinfo"))
                if (line.StartsWith(key, StringComparison.Ordinal) && line.IndexOf(':') is var i and > 0)
                    return line[(i + 1)..].Trim();
        }
        catch (IOException) { }
        return null;
    }

    private static HashSet<string> CpuFlags() => new((CpuInfo("flags") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries));

    /// <inheritdoc/>
    public IRenderable ToRenderable()
    {
        var t = new Table().Border(TableBorder.Rounded).Title("[bold]KVM[/]").AddColumn("item").AddColumn("value");
        t.AddRow("usable", Usable ? "[green]yes[/]" : $"[red]no[/]: {Markup.Escape(Reason)}");
        if (Usable)
        {
            t.AddRow("API version", ApiVersion.ToString());
            t.AddRow("vCPU mmap size", $"{VcpuMmapSize} bytes");
            foreach (var c in Capabilities) t.AddRow(Markup.Escape(c.Name) + $" ({c.Number})", c.Value.ToString());
        }
        foreach (var (mod, ps) in ModuleParameters)
            t.AddRow($"module {Markup.Escape(mod)}", Markup.Escape(string.Join("  ", ps.Select(p => $"{p.Key}={p.Value}"))));
        t.AddRow("THP", $"enabled={Markup.Escape(ThpEnabled)} defrag={Markup.Escape(ThpDefrag)}");
        foreach (var h in HugePages)
            t.AddRow($"hugetlb {Size(h.PageSize)}", $"total {h.Total}, free {h.Free}, reserved {h.Reserved}, surplus {h.Surplus}");
        t.AddRow("kernel", Markup.Escape(Kernel));
        t.AddRow("CPU", Markup.Escape($"{Cpu} × {LogicalCpus}, hardware virtualization: {HardwareVirtualization}"));
        return t;
    }

    private static string Size(long b) => b >= 1 << 30 ? $"{b >> 30} GiB" : b >= 1 << 20 ? $"{b >> 20} MiB" : $"{b >> 10} KiB";

    /// <inheritdoc/>
    public override string ToString() =>
        Usable ? $"KVM API {ApiVersion}, max vCPUs {MaxVcpus}, memslots {NrMemslots}, kernel {Kernel}" : $"KVM unusable: {Reason}";
}
