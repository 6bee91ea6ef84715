using VirtLab.Sdk.Machine.Kvm;
using Xunit;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>A fact that runs only where /dev/kvm is usable; elsewhere it is skipped with the probe's reason.</summary>
public sealed class KvmFactAttribute : FactAttribute
{
    public KvmFactAttribute()
    {
        if (!KvmBackend.IsUsable(out var reason)) Skip = "KVM not usable here: " + reason;
    }
}

/// <summary>KVM tests run alone: they count the process's fds and threads and time cancellations.</summary>
[CollectionDefinition("KVM", DisableParallelization = true)]
public sealed class KvmCollection;

/// <summary>A KVM fact that also needs 1 GiB guest pages (PDPE1GB in KVM_GET_SUPPORTED_CPUID).</summary>
public sealed class Kvm1GPagesFactAttribute : FactAttribute
{
    public Kvm1GPagesFactAttribute()
    {
        if (!KvmBackend.IsUsable(out var reason)) { Skip = "KVM not usable here: " + reason; return; }
        using var kvm = KvmFd.OpenDevKvm();
        if (!KvmCpuid.Has1GPages(KvmCpuid.Supported(kvm))) Skip = "this host's KVM does not offer PDPE1GB (1 GiB guest pages)";
    }
}
