using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using Xunit;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>KVM tests run alone: they count the process's fds, threads and resident memory.</summary>
[CollectionDefinition("KVM", DisableParallelization = true)]
public sealed class KvmCollection;

/// <summary>A KVM fact that also needs 1 GiB guest pages (PDPE1GB in KVM_GET_SUPPORTED_CPUID).</summary>
public sealed class Kvm1GPagesFactAttribute : FactAttribute
{
    public Kvm1GPagesFactAttribute()
    {
        if (!Vm.IsKvmUsable(out var reason)) { Skip = "KVM not usable here: " + reason; return; }
        using var kvm = KvmDevice.Open();
        if (!KvmCpuid.Has1GPages(KvmCpuid.Supported(kvm))) Skip = "this host's KVM does not offer PDPE1GB (1 GiB guest pages)";
    }
}
