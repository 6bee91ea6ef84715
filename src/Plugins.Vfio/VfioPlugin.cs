using VirtLab.Sdk.Plugins;

namespace VirtLab.Plugins.Vfio;

/// <summary>The VFIO plugin: the script global <c>Vfio</c>.</summary>
public sealed class VfioPlugin : VirtLabPlugin<VfioApi>
{
    public override string GlobalName => "Vfio";
    public override string Description => "VFIO type1 IOMMU model: dirty-page tracking (VFIO_IOMMU_DIRTY_PAGES), tracking strategies, DMA-writing devices";
    protected override VfioApi Create(PluginContext context) => new();
}
