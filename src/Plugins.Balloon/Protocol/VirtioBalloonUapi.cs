namespace VirtLab.Plugins.Balloon.Protocol;

/// <summary>
/// virtio-balloon as <c>include/uapi/linux/virtio_balloon.h</c> defines it (device id 5), plus VirtLab's two
/// experimental transports. Upstream feature bits 0–5 are taken (MUST_TELL_HOST 0, STATS_VQ 1, DEFLATE_ON_OOM 2,
/// FREE_PAGE_HINT 3, PAGE_POISON 4, REPORTING 5); the seed's PAGE_BITMAP (its bit 3) was never merged. Ours sit in the
/// device-specific range 50–127 that virtio 1.2 added (bits 24–41 belong to the transport), far from where the balloon's
/// own bits grow: <see cref="F_PAGE_BITMAP"/> = 60, <see cref="F_PAGE_RANGES"/> = 61.
/// </summary>
public static class VirtioBalloon
{
    public const uint DeviceId = 5;

    public const int F_MUST_TELL_HOST = 0, F_STATS_VQ = 1, F_DEFLATE_ON_OOM = 2, F_FREE_PAGE_HINT = 3, F_PAGE_POISON = 4, F_REPORTING = 5;

    /// <summary>VirtLab experimental: inflate/deflate requests carry the seed's page-bitmap format (<see cref="PageBitmapFormat"/>).</summary>
    public const int F_PAGE_BITMAP = 60;

    /// <summary>VirtLab experimental: inflate/deflate requests carry {start PFN, pages} ranges (<see cref="PageRangeFormat"/>).</summary>
    public const int F_PAGE_RANGES = 61;

    /// <summary>VIRTIO_F_VERSION_1 (bit 32): little-endian everything.</summary>
    public const int F_VERSION_1 = 32;

    public const int PfnShift = 12;
    public const long PageSize = 1L << PfnShift;

    /// <summary>Linux's <c>vb->pfns[VIRTIO_BALLOON_ARRAY_PFNS_MAX]</c>: a PFN-array request carries at most 256 u32 PFNs (1 MiB).</summary>
    public const int PfnsPerRequest = 256;

    /// <summary>Linux's <c>OOM_VBALLOON_DEFAULT_PAGES</c>: pages given back per OOM notification with DEFLATE_ON_OOM.</summary>
    public const int OomPages = 256;

    /// <summary>Linux's <c>PAGE_REPORTING_CAPACITY</c>: free-page chunks per reporting request.</summary>
    public const int ReportingCapacity = 32;

    /// <summary>pageblock_order on x86-64: free page reporting reports free blocks of at least 2 MiB.</summary>
    public const int ReportingOrder = 9;

    // struct virtio_balloon_config { le32 num_pages; le32 actual; le32 free_page_hint_cmd_id; le32 poison_val; }
    public const int ConfigNumPages = 0, ConfigActual = 4, ConfigFreePageHintCmdId = 8, ConfigPoisonVal = 12, ConfigSize = 16;

    // struct virtio_balloon_stat { le16 tag; le64 val; } __attribute__((packed))
    public const int StatSize = 10;
    public const int StatTags = 10;

    public const ushort S_SWAP_IN = 0, S_SWAP_OUT = 1, S_MAJFLT = 2, S_MINFLT = 3, S_MEMFREE = 4, S_MEMTOT = 5,
        S_AVAIL = 6, S_CACHES = 7, S_HTLB_PGALLOC = 8, S_HTLB_PGFAIL = 9;

    /// <summary>The names QEMU reports the stats under (<c>guest-stats</c>).</summary>
    public static string StatName(int tag) => tag switch
    {
        S_SWAP_IN => "swap-in", S_SWAP_OUT => "swap-out", S_MAJFLT => "major-faults", S_MINFLT => "minor-faults",
        S_MEMFREE => "free-memory", S_MEMTOT => "total-memory", S_AVAIL => "available-memory", S_CACHES => "disk-caches",
        S_HTLB_PGALLOC => "htlb-pgalloc", S_HTLB_PGFAIL => "htlb-pgfail",
        _ => $"tag {tag}",
    };

    /// <summary>Queue indexes as Linux's init_vqs assigns them: inflate, deflate, then stats and reporting when negotiated.</summary>
    public static (int Inflate, int Deflate, int Stats, int FreePageHint, int Reporting) QueueIndexes(ulong features)
    {
        int next = 2;
        int stats = Has(features, F_STATS_VQ) ? next++ : -1;
        int hint = Has(features, F_FREE_PAGE_HINT) ? next++ : -1;
        int reporting = Has(features, F_REPORTING) ? next++ : -1;
        return (0, 1, stats, hint, reporting);
    }

    public static bool Has(ulong features, int bit) => (features & (1UL << bit)) != 0;

    public static ulong Bit(int bit) => 1UL << bit;

    public static string FeatureName(int bit) => bit switch
    {
        F_MUST_TELL_HOST => "MUST_TELL_HOST", F_STATS_VQ => "STATS_VQ", F_DEFLATE_ON_OOM => "DEFLATE_ON_OOM",
        F_FREE_PAGE_HINT => "FREE_PAGE_HINT", F_PAGE_POISON => "PAGE_POISON", F_REPORTING => "REPORTING",
        F_PAGE_BITMAP => "PAGE_BITMAP (VirtLab)", F_PAGE_RANGES => "PAGE_RANGES (VirtLab)", F_VERSION_1 => "VERSION_1",
        28 => "INDIRECT_DESC", 29 => "EVENT_IDX",
        _ => $"bit {bit}",
    };

    public static string FeatureNames(ulong features)
        => string.Join(" | ", Enumerable.Range(0, 64).Where(b => Has(features, b)).Select(FeatureName));
}
