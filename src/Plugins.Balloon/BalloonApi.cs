using VirtLab.Plugins.Balloon.Guest;
using VirtLab.Plugins.Balloon.Host;
using VirtLab.Plugins.Balloon.Protocol;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Balloon;

/// <summary>What scripts reach as <c>Balloon</c>: <c>var b = vm.Attach(Balloon.Device(transport: BalloonTransport.Bitmap));</c></summary>
public sealed class BalloonApi
{
    /// <summary>
    /// A virtio-balloon device and its guest driver, to attach to a VM. The device offers MUST_TELL_HOST, STATS_VQ,
    /// DEFLATE_ON_OOM, REPORTING and both experimental transports; the driver negotiates <paramref name="transport"/>.
    /// </summary>
    /// <param name="transport">Pfn (upstream), Bitmap (the seed's, feature bit 60) or Ranges (feature bit 61); default PFN
    /// arrays when u32 PFNs reach all guest RAM, else Bitmap (a VM's test slot sits at the top of the guest-physical space
    /// unless created with <c>testSlotGpa</c>).</param>
    /// <param name="discard">Auto: per page for PFN arrays (QEMU), runs otherwise; or force PerPage / Runs.</param>
    /// <param name="allocation">Auto: single pages for PFN arrays (balloon_page_alloc), chunks otherwise.</param>
    /// <param name="held">Guest memory a workload holds and never gives to the balloon (default 1/16 of RAM).</param>
    public BalloonDevice Device(BalloonTransport? transport = null, DiscardMode discard = DiscardMode.Auto,
        DeflateHint deflate = DeflateHint.WillNeed, AllocationMode allocation = AllocationMode.Auto, Size? held = null,
        bool wholeThpPages = true, bool deflateOnOom = true, bool stats = true, bool reporting = true, TimeSpan? statsInterval = null,
        TimeSpan? reportingInterval = null)
        => new(new BalloonOptions
        {
            Transport = transport, Discard = discard, Deflate = deflate, Allocation = allocation, GuestHeld = held,
            WholeThpPages = wholeThpPages, DeflateOnOom = deflateOnOom, StatsQueue = stats, Reporting = reporting, StatsInterval = statsInterval,
            ReportingInterval = reportingInterval,
        });

    public BalloonDevice Device(BalloonOptions options) => new(options);

    /// <summary>The transports a driver can negotiate: upstream PFN arrays and VirtLab's two experimental ones.</summary>
    public IReadOnlyList<BalloonTransport> Transports { get; } = [BalloonTransport.Pfn, BalloonTransport.Bitmap, BalloonTransport.Ranges];

    public override string ToString()
        => $"Balloon: virtio-balloon (device id {VirtioBalloon.DeviceId}); transports pfn, bitmap (feature bit {VirtioBalloon.F_PAGE_BITMAP}), ranges (feature bit {VirtioBalloon.F_PAGE_RANGES}); Balloon.Device(...)";
}
