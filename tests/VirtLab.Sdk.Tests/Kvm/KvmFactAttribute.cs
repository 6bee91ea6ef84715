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
