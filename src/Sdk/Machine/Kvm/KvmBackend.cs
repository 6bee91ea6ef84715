namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>Entry points the backend-neutral <c>Vm.Create</c> uses to pick and build the real KVM backend.</summary>
internal static class KvmBackend
{
    /// <summary>True when /dev/kvm opens and answers KVM_GET_API_VERSION with 12 and <c>VIRTLAB_DISABLE_KVM</c> is not
    /// set; otherwise why not. The one check behind <see cref="Vm.IsKvmUsable"/> (the only public entry point),
    /// <c>Backend.Auto</c> and <c>RequireKvm</c>; a KVM VM is only built after it said yes.</summary>
    public static bool IsUsable(out string reason)
    {
        if (Environment.GetEnvironmentVariable("VIRTLAB_DISABLE_KVM") is { Length: > 0 } v && v != "0")
        {
            reason = "disabled by VIRTLAB_DISABLE_KVM";
            return false;
        }
        var sys = KvmSystem.Probe();
        reason = sys.Reason;
        return sys.Usable;
    }

    /// <summary>Build a KVM VM; checks KVM limits (vCPUs, ring size, system slot) before any kernel call.</summary>
    internal static Vm Create(VmOptions options) => KvmVm.Build(options);
}
