using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;
using Xunit;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>
/// The KVM backend's host checks (the one place they are made, <c>KvmVm.CheckHostLimits</c>) against a synthesized
/// host, so the messages are tested where /dev/kvm is absent.
/// </summary>
public class KvmHostLimitsTests
{
    private static KvmSystem Host(int maxVcpus = 8, int ring = 65536, int manual = 3) => new()
    {
        Usable = true,
        ApiVersion = 12,
        Capabilities =
        [
            new(KvmCap.Name(KvmCap.MAX_VCPUS), KvmCap.MAX_VCPUS, maxVcpus),
            new(KvmCap.Name(KvmCap.DIRTY_LOG_RING), KvmCap.DIRTY_LOG_RING, ring),
            new(KvmCap.Name(KvmCap.MANUAL_DIRTY_LOG_PROTECT2), KvmCap.MANUAL_DIRTY_LOG_PROTECT2, manual),
        ],
    };

    private static void Check(VmOptions o, KvmSystem host)
    {
        o.Validate(); // what does not depend on the host passed already
        KvmVm.CheckHostLimits(o, host);
    }

    [Fact]
    public void What_the_host_allows_passes()
    {
        Check(new VmOptions(4.MiB()) { Vcpus = 8, DirtyRingBytes = 64.KiB(), ManualProtect = true, InitiallySet = true }, Host());
    }

    [Fact]
    public void More_vcpus_than_KVM_allows_name_the_cap()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Check(new VmOptions(4.MiB()) { Vcpus = 9 }, Host()));
        Assert.Equal("Vcpus", e.ParamName);
        Assert.StartsWith("this host's KVM allows at most 8 vCPUs per VM (KVM_CAP_MAX_VCPUS); got 9", e.Message);
    }

    [Fact]
    public void The_system_slot_has_a_record_for_every_vcpu_VmOptions_allows()
    {
        // Why the backend does not check the vCPU count against its record area again.
        Assert.True(VmOptions.MaxVcpusDefault <= SystemLayout.MaxRecords, $"{VmOptions.MaxVcpusDefault} vCPUs allowed, {SystemLayout.MaxRecords} records");
        Check(new VmOptions(4.MiB()) { Vcpus = VmOptions.MaxVcpusDefault }, Host(maxVcpus: 4096));
    }

    [Fact]
    public void A_ring_without_the_cap_or_above_its_value_is_refused()
    {
        var none = Assert.Throws<BackendUnavailableException>(() => Check(new VmOptions(4.MiB()) { DirtyRingBytes = 64.KiB() }, Host(ring: 0)));
        Assert.Contains("KVM_CAP_DIRTY_LOG_RING is 0", none.Message);
        var big = Assert.Throws<ArgumentOutOfRangeException>(() => Check(new VmOptions(4.MiB()) { DirtyRingBytes = 128.KiB() }, Host(ring: 65536)));
        Assert.Equal("DirtyRingBytes", big.ParamName);
        Assert.StartsWith("this host's KVM allows dirty rings of at most 65536 bytes (KVM_CAP_DIRTY_LOG_RING); got 131072", big.Message);
    }

    [Fact]
    public void Initially_set_needs_the_flag_in_the_cap()
    {
        var e = Assert.Throws<BackendUnavailableException>(() =>
            Check(new VmOptions(4.MiB()) { ManualProtect = true, InitiallySet = true }, Host(manual: 1)));
        Assert.Contains("flags 0x3 (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 reports 0x1)", e.Message);
        Check(new VmOptions(4.MiB()) { ManualProtect = true }, Host(manual: 1));
    }

    [Fact]
    public void A_system_slot_too_small_for_the_layout_says_how_much_it_needs()
    {
        var e = Assert.Throws<ArgumentException>(() => Check(new VmOptions(4.MiB()) { SystemMemory = 512.KiB() }, Host()));
        Assert.Equal("SystemMemory", e.ParamName);
        Assert.Contains($"it needs at least {SystemLayout.MinSize(1) >> 10} KiB", e.Message);
    }
}
