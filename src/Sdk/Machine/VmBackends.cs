using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Machine.Sim;

namespace VirtLab.Sdk.Machine;

/// <summary>Picks and builds the backend a <see cref="VmOptions"/> asks for; the one place that knows both backends.</summary>
internal static class VmBackends
{
    public static Vm Create(VmOptions options)
    {
        WarmUp.BeforeVm(); // a shell's warm-up still running: let it end (and its garbage go) before this VM's first timed call
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        switch (options.Backend)
        {
            case Backend.Sim:
                return SimBackend.Create(options);
            case Backend.Kvm:
                if (!IsKvmUsable(out var reason))
                    throw new BackendUnavailableException(Backend.Kvm, $"the KVM backend is not usable here: {reason}. Use Backend.Sim (or Backend.Auto to fall back to it).");
                return KvmBackend.Create(options);
            case Backend.Auto:
                return IsKvmUsable(out _) ? KvmBackend.Create(options) : SimBackend.Create(options);
            default:
                throw new ArgumentOutOfRangeException(nameof(options), options.Backend, "backend must be Auto, Kvm or Sim");
        }
    }

    public static bool IsKvmUsable(out string reason) => KvmBackend.IsUsable(out reason);
}
