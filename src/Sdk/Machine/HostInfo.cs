using System.Globalization;

namespace VirtLab.Sdk.Machine;

/// <summary>Facts about the host that sizing and placement depend on (read from /proc and /sys).</summary>
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
    public static string ThpMode
    {
        get
        {
            var t = ReadText("/sys/kernel/mm/transparent_hugepage/enabled");
            if (t is null) return "unavailable";
            int a = t.IndexOf('['), b = t.IndexOf(']');
            return a >= 0 && b > a ? t[(a + 1)..b] : t.Trim();
        }
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
