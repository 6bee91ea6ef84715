namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>Entry points the backend-neutral <c>Vm.Create</c> uses to pick and build the real KVM backend.</summary>
public static class KvmBackend
{
    /// <summary>True when /dev/kvm opens and answers KVM_GET_API_VERSION with 12; otherwise why not.</summary>
    public static bool IsUsable(out string reason)
    {
        try
        {
            using var fs = new FileStream("/dev/kvm", FileMode.Open, FileAccess.ReadWrite);
            reason = "";
            return true;
        }
        catch (Exception e)
        {
            reason = $"/dev/kvm: {e.Message}";
            return false;
        }
    }

    // internal static Vm Create(VmOptions options) — enabled once M2's Vm/VmOptions exist.
}
