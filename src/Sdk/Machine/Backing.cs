using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>Which machine runs the guest work.</summary>
public enum Backend
{
    /// <summary>KVM when <c>/dev/kvm</c> opens and works, else the simulator.</summary>
    Auto,
    /// <summary>Real KVM: memslots, vCPU threads running x86-64 guest code, the kernel's dirty log.</summary>
    Kvm,
    /// <summary>Software model: real host memory, vCPU threads interpreting the workload, KVM's dirty-log semantics.</summary>
    Sim,
}

/// <summary>How guest memory is backed on the host — the KVM selftests' <c>vm_mem_backing_src_type</c>.</summary>
public enum Backing
{
    /// <summary><c>anonymous</c>: private anonymous memory, 4 KiB pages.</summary>
    Anonymous,
    /// <summary><c>anonymous_thp</c>: private anonymous, 2 MiB aligned, <c>MADV_HUGEPAGE</c>.</summary>
    AnonymousThp,
    /// <summary><c>anonymous_hugetlb_2mb</c> (and plain <c>anonymous_hugetlb</c> on x86): <c>MAP_HUGETLB | MAP_HUGE_2MB</c>.</summary>
    AnonymousHugetlb2M,
    /// <summary><c>anonymous_hugetlb_1gb</c>: <c>MAP_HUGETLB | MAP_HUGE_1GB</c>.</summary>
    AnonymousHugetlb1G,
    /// <summary><c>shmem</c>: a memfd mapped shared, 4 KiB pages.</summary>
    Shmem,
    /// <summary><c>shared_hugetlb</c>: a memfd with <c>MFD_HUGETLB</c> (default 2 MiB) mapped shared.</summary>
    SharedHugetlb,
}

/// <summary>Page sizes, names and parsing of <see cref="Backing"/> values.</summary>
public static class BackingInfo
{
    /// <summary>Page sizes in bytes: 4 KiB, 2 MiB, 1 GiB.</summary>
    public const long Page4K = 4096, Page2M = 2L << 20, Page1G = 1L << 30;

    /// <summary>The selftests' name (<c>-s</c> option of kvm_page_table_test / dirty_log_perf_test).</summary>
    public static string Name(this Backing b) => b switch
    {
        Backing.Anonymous => "anonymous",
        Backing.AnonymousThp => "anonymous_thp",
        Backing.AnonymousHugetlb2M => "anonymous_hugetlb_2mb",
        Backing.AnonymousHugetlb1G => "anonymous_hugetlb_1gb",
        Backing.Shmem => "shmem",
        Backing.SharedHugetlb => "shared_hugetlb",
        _ => throw new ArgumentOutOfRangeException(nameof(b), b, null),
    };

    /// <summary>The names <see cref="TryParse"/> accepts (the selftests' -s names, e.g. anonymous_thp).</summary>
    public static IReadOnlyList<string> Names { get; } =
        ["anonymous", "anonymous_thp", "anonymous_hugetlb", "anonymous_hugetlb_2mb", "anonymous_hugetlb_1gb", "shmem", "shared_hugetlb"];

    /// <summary>Parses a selftests backing name (also accepts the enum names, case-insensitive).</summary>
    public static Backing Parse(string name)
    {
        if (TryParse(name, out var b)) return b;
        throw new FormatException($"unknown backing '{name}'; expected one of: {string.Join(", ", Names)}");
    }

    /// <summary>Parses a selftests-style name (anonymous, anonymous_thp, shmem, …) or the enum name, case-insensitively.</summary>
    public static bool TryParse(string? name, out Backing backing)
    {
        var n = (name ?? "").Trim().ToLowerInvariant().Replace('-', '_');
        Backing? r = n switch
        {
            "anonymous" or "anon" => Backing.Anonymous,
            "anonymous_thp" or "thp" or "anonymousthp" => Backing.AnonymousThp,
            // x86's default huge page size is 2 MiB, which is what plain anonymous_hugetlb uses.
            "anonymous_hugetlb" or "anonymous_hugetlb_2mb" or "anonymoushugetlb2m" or "hugetlb" => Backing.AnonymousHugetlb2M,
            "anonymous_hugetlb_1gb" or "anonymoushugetlb1g" => Backing.AnonymousHugetlb1G,
            "shmem" => Backing.Shmem,
            "shared_hugetlb" or "sharedhugetlb" => Backing.SharedHugetlb,
            _ => null,
        };
        backing = r ?? default;
        return r.HasValue;
    }

    /// <summary>The backing's page size (the selftests' <c>get_backing_src_pagesz</c>): sizes and gpas must be multiples of it.</summary>
    public static long PageSize(this Backing b) => b switch
    {
        Backing.Anonymous or Backing.Shmem => Page4K,
        Backing.AnonymousThp => HostInfo.ThpPageSize,
        Backing.AnonymousHugetlb2M or Backing.SharedHugetlb => Page2M,
        Backing.AnonymousHugetlb1G => Page1G,
        _ => throw new ArgumentOutOfRangeException(nameof(b), b, null),
    };

    /// <summary>Whether the backing is hugetlbfs memory (needs reserved huge pages).</summary>
    public static bool IsHugetlb(this Backing b) => b is Backing.AnonymousHugetlb2M or Backing.AnonymousHugetlb1G or Backing.SharedHugetlb;

    /// <summary>Backed by a memfd mapped MAP_SHARED (discard = hole punch, not MADV_DONTNEED).</summary>
    public static bool IsShared(this Backing b) => b is Backing.Shmem or Backing.SharedHugetlb;

    /// <summary>The backing's page size as a <see cref="Size"/>.</summary>
    public static Size PageSizeAsSize(this Backing b) => new(b.PageSize());
}
