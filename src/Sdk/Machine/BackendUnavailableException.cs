using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// The backend asked for cannot run here, or lacks a capability the options need (no usable /dev/kvm, no dirty ring,
/// no manual dirty-log protection). A missing requirement: <c>virtlab run</c> exits 4 and <c>virtlab test</c> reports skipped.
/// </summary>
public sealed class BackendUnavailableException(Backend backend, string reason) : RequirementMissingException(reason)
{
    /// <summary>The backend that was asked for.</summary>
    public Backend Backend { get; } = backend;
}
