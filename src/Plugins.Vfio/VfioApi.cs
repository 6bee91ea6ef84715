using VirtLab.Plugins.Vfio.Devices;
using VirtLab.Plugins.Vfio.Tracking;
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

    /// <summary>A mediated device on <paramref name="container"/>'s VM (attach it: <c>vm.Attach(Vfio.Mdev(c))</c>).</summary>
    public MediatedDevice Mdev(VfioContainer container, string name = "mdev0") => new(container, name);

    /// <summary>An assigned (passthrough) device on <paramref name="container"/>'s VM.</summary>
    public PassthroughDevice Passthrough(VfioContainer container, string name = "pci0") => new(container, name);

    /// <summary>Every strategy, attached to <paramref name="container"/> so they see the same traffic.</summary>
    public IReadOnlyList<IDirtyTracker> Strategies(VfioContainer container) =>
    [
        new PerDmaBitmapTracker(container),
        container.Track(new DirtyRangeTreeTracker(container)),
        new QemuIovaWalkTracker(container),
        container.Track(new IommufdTracker(container)),
        container.Track(new DeviceDmaLoggingTracker(container)),
    ];

    public override string ToString() => "Vfio: Container(vm), Type1v2(vm, kind), Mdev(c), Passthrough(c), Strategies(c); see docs/VFIO.md";
}
