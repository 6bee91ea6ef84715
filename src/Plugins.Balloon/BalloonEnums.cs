using VirtLab.Plugins.Balloon.Protocol;

namespace VirtLab.Plugins.Balloon;

/// <summary>How inflate and deflate requests name their pages.</summary>
public enum BalloonTransport
{
    /// <summary>Upstream: an array of at most 256 little-endian u32 PFNs per request.</summary>
    Pfn,
    /// <summary>The seed's format (feature <see cref="VirtioBalloon.F_PAGE_BITMAP"/>): a response header, then bitmap headers.</summary>
    Bitmap,
    /// <summary>{start PFN, pages} pairs (feature <see cref="VirtioBalloon.F_PAGE_RANGES"/>), as the later scatter-gather series.</summary>
    Ranges,
}

public static class BalloonTransportInfo
{
    public static string Name(this BalloonTransport t) => t switch
    {
        BalloonTransport.Pfn => "pfn",
        BalloonTransport.Bitmap => "bitmap",
        BalloonTransport.Ranges => "ranges",
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "transport must be Pfn, Bitmap or Ranges"),
    };

    /// <summary>The feature bit that selects the transport (none for PFN arrays).</summary>
    public static ulong Feature(this BalloonTransport t) => t switch
    {
        BalloonTransport.Pfn => 0,
        BalloonTransport.Bitmap => VirtioBalloon.Bit(VirtioBalloon.F_PAGE_BITMAP),
        BalloonTransport.Ranges => VirtioBalloon.Bit(VirtioBalloon.F_PAGE_RANGES),
        _ => throw new ArgumentOutOfRangeException(nameof(t), t, "transport must be Pfn, Bitmap or Ranges"),
    };

    /// <summary>The transport a negotiated feature set selects; both experimental bits at once is a driver error.</summary>
    public static BalloonTransport FromFeatures(ulong features)
    {
        bool bitmap = VirtioBalloon.Has(features, VirtioBalloon.F_PAGE_BITMAP), ranges = VirtioBalloon.Has(features, VirtioBalloon.F_PAGE_RANGES);
        if (bitmap && ranges)
            throw new ArgumentException("features PAGE_BITMAP (60) and PAGE_RANGES (61) are exclusive: a driver negotiates at most one transport");
        return bitmap ? BalloonTransport.Bitmap : ranges ? BalloonTransport.Ranges : BalloonTransport.Pfn;
    }
}

/// <summary>How the device gives inflated pages back to the host.</summary>
public enum DiscardMode
{
    /// <summary>Per page for PFN arrays (as QEMU), coalesced runs for the bitmap and range transports (the seed's host side).</summary>
    Auto,
    /// <summary>One MADV_DONTNEED (or hole punch) per 4 KiB page — per host page on huge-page backings — as QEMU does.</summary>
    PerPage,
    /// <summary>One call per contiguous run of the request.</summary>
    Runs,
}

/// <summary>What the device does when the guest deflates (takes pages back).</summary>
public enum DeflateHint
{
    /// <summary>MADV_WILLNEED over the host pages, as QEMU.</summary>
    WillNeed,
    /// <summary>Nothing: the next guest access faults the page in.</summary>
    None,
}

/// <summary>How the driver takes pages for the balloon (stage a).</summary>
public enum AllocationMode
{
    /// <summary>Single pages for PFN arrays (Linux's balloon_page_alloc), chunks for the bitmap and range transports.</summary>
    Auto,
    /// <summary>One 4 KiB page per allocation, as Linux's balloon_page_alloc.</summary>
    SinglePages,
    /// <summary>The largest free buddy block that fits (up to 4 MiB) per allocation: the seed's TODO for stage a.</summary>
    Chunks,
}
