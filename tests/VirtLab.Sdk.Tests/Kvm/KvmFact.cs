using VirtLab.Sdk.Machine;
using Xunit;

namespace VirtLab.Sdk.Tests.Kvm;

// Also compiled into the plugin test projects (linked in their .csproj): one definition of "KVM is usable here".
/// <summary>
/// A fact that runs only where KVM is usable; elsewhere it is skipped with the probe's reason. It asks
/// <see cref="Vm.IsKvmUsable"/>, the one entry point, so that <c>VIRTLAB_DISABLE_KVM=1</c> skips these tests too.
/// </summary>
public sealed class KvmFactAttribute : FactAttribute
{
    public KvmFactAttribute()
    {
        if (!Vm.IsKvmUsable(out var reason)) Skip = "KVM not usable here: " + reason;
    }
}

