using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Sdk.Machine;

namespace VirtLab.Plugins.Vfio;

/// <summary>What scripts reach as <c>Vfio</c>.</summary>
public sealed class VfioApi
{
    /// <summary>A new container (/dev/vfio/vfio) whose process memory is <paramref name="vm"/>'s guest RAM.</summary>
    public VfioContainer Container(Vm? vm = null) => new(vm);

    /// <summary>
    /// A type1 v2 container with one group of <paramref name="kind"/> set to it and the IOMMU set: what QEMU has after
    /// opening a device, before any mapping.
    /// </summary>
    public VfioContainer Type1v2(Vm? vm = null, VfioGroupKind kind = VfioGroupKind.Emulated)
    {
        var c = new VfioContainer(vm);
        c.AddGroup(kind == VfioGroupKind.Emulated ? VfioGroup.Emulated() : VfioGroup.Passthrough());
        c.SetIommu();
        return c;
    }

    public override string ToString() => "Vfio: Container(vm), Type1v2(vm, kind); see docs/VFIO.md";
}
