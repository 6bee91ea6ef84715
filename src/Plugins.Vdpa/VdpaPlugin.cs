using VirtLab.Sdk.Plugins;

namespace VirtLab.Plugins.Vdpa;

/// <summary>The Vdpa plugin: vhost-vdpa char devices over vdpa_sim-like net and block devices.</summary>
public sealed class VdpaPlugin : VirtLabPlugin<VdpaApi>
{
    public override string GlobalName => "Vdpa";
    public override string Description => "vhost-vdpa: the kernel's ioctls and IOTLB over simulated net and block devices";
    protected override VdpaApi Create(PluginContext context) => new();
}
