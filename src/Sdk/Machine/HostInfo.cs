using System.Globalization;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// Facts about the host (read from /proc and /sys): what sizing and placement depend on, and what `virtlab doctor`
/// (<see cref="Kvm.KvmSystem"/>) and the run record (<see cref="Measure.EnvironmentInfo"/>) show. The one place
/// that probes the host; the KVM device itself is probed by <see cref="Kvm.KvmSystem"/>.
/// </summary>
public static class HostInfo
{
    /// <summary>Physical RAM (MemTotal of /proc/meminfo) in bytes; 0 when unknown.</summary>
    public static long MemTotalBytes => ReadMeminfoKb("MemTotal") * 1024;

    /// <summary>MemAvailable of /proc/meminfo in bytes; 0 when unknown.</summary>
    public static long MemAvailableBytes => ReadMeminfoKb("MemAvailable") * 1024;

    /// <summary>The host CPU's physical address width (CPUID 0x80000008, as /proc/cpuinfo shows it) — what the selftests use for the guest.</summary>
    public static int PhysAddressBits { get; } = ReadPhysBits();

    /// <summary>THP size (hpage_pmd_size); 2 MiB on x86.</summary>
    public static long ThpPageSize { get; } = ReadLong("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size") is > 0 and var v ? v : 2L << 20;

    /// <summary>THP mode: always, madvise or never (the bracketed word of transparent_hugepage/enabled).</summary>
    public static string ThpMode => Bracketed(ReadText("/sys/kernel/mm/transparent_hugepage/enabled"));

    /// <summary>THP defrag mode (the bracketed word of transparent_hugepage/defrag), "unavailable" without THP.</summary>
    public static string ThpDefrag => Bracketed(ReadText("/sys/kernel/mm/transparent_hugepage/defrag"));

    /// <summary>Kernel release (/proc/sys/kernel/osrelease); null when unreadable.</summary>
    public static string? KernelRelease => ReadText("/proc/sys/kernel/osrelease")?.Trim() is { Length: > 0 } k ? k.Split('\n')[0] : null;

    /// <summary>CPU model (/proc/cpuinfo: "model name" on x86; "Model" or "Hardware" on some arm64 kernels); null when unknown.</summary>
    public static string? CpuModel
    {
        get
        {
            foreach (var key in new[] { "model name", "Model", "Hardware" })
                if (CpuInfoField(key) is { } v) return v;
            return null;
        }
    }

    /// <summary>The first CPU's flags (/proc/cpuinfo).</summary>
    public static IReadOnlySet<string> CpuFlags => new HashSet<string>((CpuInfoField("flags") ?? "").Split(' ', StringSplitOptions.RemoveEmptyEntries));

    /// <summary>Hardware virtualization the host CPU advertises: "vmx", "svm" or "none" (e.g. PVM's emulated guests).</summary>
    public static string HardwareVirtualization => CpuFlags is var f && f.Contains("vmx") ? "vmx" : f.Contains("svm") ? "svm" : "none";

    /// <summary>Module → parameter → value, from /sys/module/kvm*/parameters/.</summary>
    public static IReadOnlyDictionary<string, IReadOnlyDictionary<string, string>> KvmModuleParameters
    {
        get
        {
            var result = new SortedDictionary<string, IReadOnlyDictionary<string, string>>(StringComparer.Ordinal);
            try
            {
                foreach (var mod in Directory.GetDirectories("/sys/module", "kvm*"))
                {
                    var dir = Path.Combine(mod, "parameters");
                    if (!Directory.Exists(dir)) continue;
                    var ps = new SortedDictionary<string, string>(StringComparer.Ordinal);
                    foreach (var p in Directory.GetFiles(dir)) ps[Path.GetFileName(p)] = ReadText(p)?.Trim() ?? "";
                    result[Path.GetFileName(mod)] = ps;
                }
            }
            catch (IOException) { }
            catch (UnauthorizedAccessException) { }
            return result;
        }
    }

    // "always [madvise] never" → "madvise"
    static string Bracketed(string? t)
    {
        if (t is null) return "unavailable";
        int a = t.IndexOf('['), b = t.IndexOf(']');
        return a >= 0 && b > a ? t[(a + 1)..b] : t.Trim();
    }

    static string? CpuInfoField(string key)
    {
        var t = ReadText("/proc/cpuinfo");
        if (t is null) return null;
        foreach (var line in t.Split('\n'))
        {
            int colon = line.IndexOf(':');
            if (colon > 0 && line[..colon].Trim() == key) return line[(colon + 1)..].Trim();
        }
        return null;
    }

    /// <summary>Huge page pool of one size (bytes): total (nr_hugepages), free and reserved-but-unfaulted.</summary>
    public readonly record struct HugePool(long PageSize, long Total, long Free, long Reserved, long Surplus)
    {
        /// <summary>Pages a new mapping can still reserve.</summary>
        public long Available => Math.Max(0, Free - Reserved);
        /// <summary>The pool's sysfs folder (/sys/kernel/mm/hugepages/hugepages-&lt;N&gt;kB).</summary>
        public string SysfsDir => HugetlbDir(PageSize);
        /// <inheritdoc/>
        public override string ToString() => $"{PageSize >> 10} kB: total {Total}, free {Free}, reserved {Reserved}";
    }

    /// <summary>The sysfs folder of the huge page pool of <paramref name="pageSize"/> bytes.</summary>
    public static string HugetlbDir(long pageSize) => $"/sys/kernel/mm/hugepages/hugepages-{pageSize >> 10}kB";

    /// <summary>The huge page pool of <paramref name="pageSize"/> bytes as sysfs shows it now.</summary>
    public static HugePool HugePages(long pageSize)
    {
        var d = HugetlbDir(pageSize);
        return new HugePool(pageSize, Math.Max(0, ReadLong(d + "/nr_hugepages")), Math.Max(0, ReadLong(d + "/free_hugepages")),
            Math.Max(0, ReadLong(d + "/resv_hugepages")), Math.Max(0, ReadLong(d + "/surplus_hugepages")));
    }

    /// <summary>Every huge page pool the kernel offers.</summary>
    public static IReadOnlyList<HugePool> AllHugePools()
    {
        var list = new List<HugePool>();
        try
        {
            foreach (var dir in Directory.GetDirectories("/sys/kernel/mm/hugepages"))
            {
                var name = Path.GetFileName(dir); // hugepages-2048kB
                if (name.StartsWith("hugepages-") && name.EndsWith("kB") &&
                    long.TryParse(name["hugepages-".Length..^2], out var kb))
                    list.Add(HugePages(kb * 1024));
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        list.Sort((a, b) => a.PageSize.CompareTo(b.PageSize));
        return list;
    }

    static int ReadPhysBits()
    {
        var t = ReadText("/proc/cpuinfo");
        if (t is not null)
        {
            foreach (var line in t.AsSpan().EnumerateLines())
            {
                if (!line.StartsWith("address sizes")) continue;
                var s = line.ToString();
                var colon = s.IndexOf(':');
                var bitsAt = s.IndexOf(" bits physical", StringComparison.Ordinal);
                if (colon > 0 && bitsAt > colon && int.TryParse(s[(colon + 1)..bitsAt].Trim(), out var bits)) return bits;
            }
        }
        return 36; // the architectural minimum when CPUID 0x80000008 is missing
    }

    static long ReadMeminfoKb(string key)
    {
        var t = ReadText("/proc/meminfo");
        if (t is null) return 0;
        foreach (var line in t.Split('\n'))
        {
            if (!line.StartsWith(key + ":", StringComparison.Ordinal)) continue;
            var parts = line[(key.Length + 1)..].Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length > 0 && long.TryParse(parts[0], NumberStyles.Integer, CultureInfo.InvariantCulture, out var kb)) return kb;
        }
        return 0;
    }

    internal static string? ReadText(string path)
    {
        try { return File.ReadAllText(path); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    internal static long ReadLong(string path)
        => long.TryParse(ReadText(path)?.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out var v) ? v : -1;
}
