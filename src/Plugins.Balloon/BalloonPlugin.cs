using VirtLab.Sdk.Plugins;

namespace VirtLab.Plugins.Balloon;

/// <summary>The <c>Balloon</c> script global: virtio-balloon devices over a VM's real guest memory.</summary>
public sealed class BalloonPlugin : VirtLabPlugin<BalloonApi>
{
    public override string GlobalName => "Balloon";
    public override string Description => "virtio-balloon over real guest memory: PFN arrays, page bitmaps, page ranges; seed 004's stage table";
    protected override BalloonApi Create(PluginContext context) => new();
}
