using VirtLab.Plugins.Balloon.Protocol;

namespace VirtLab.Plugins.Balloon;

/// <summary>What scripts reach as <c>Balloon</c>.</summary>
public sealed class BalloonApi
{
    /// <summary>The transports a driver can negotiate: upstream PFN arrays and VirtLab's two experimental ones.</summary>
    public IReadOnlyList<BalloonTransport> Transports { get; } = [BalloonTransport.Pfn, BalloonTransport.Bitmap, BalloonTransport.Ranges];

    public override string ToString()
        => $"Balloon: virtio-balloon (device id {VirtioBalloon.DeviceId}); transports pfn, bitmap (feature bit {VirtioBalloon.F_PAGE_BITMAP}), ranges (feature bit {VirtioBalloon.F_PAGE_RANGES})";
}
