using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Machine.Kvm.Benchmarks;
using Xunit;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>
/// KvmRawIoctls.Populate, the bare-ioctl baseline of a populate (scripts/bench-dirty-log.csx): it runs the SDK's guest
/// code to completion on vCPU 0 and leaves the same kernel state as Vm.Run of the same workload.
/// </summary>
[Collection("KVM")]
public class KvmRawPopulateTests
{
    private static VmOptions Options => new(2.MiB()) { Backend = Backend.Kvm, ManualProtect = true, LogDirtyPages = true };

    [KvmFact]
    public void Raw_populate_dirties_the_pages_vm_run_dirties()
    {
        using var raw = Vm.Create(Options);
        using var harness = Vm.Create(Options);
        var workload = Workload.Write(stride: 3 * 4096, offset: 8) with { WriteValue = 0x5a5a };
        var t = KvmRawIoctls.Populate(raw, workload);
        harness.Run(workload);

        var rawLog = raw.TestSlot.GetDirtyLog();
        var harnessLog = harness.TestSlot.GetDirtyLog();
        Assert.Equal(raw.TestSlot.Pages / 3, rawLog.Count); // whole strides of 3 pages
        Assert.Equal(harnessLog.SetPages.ToArray(), rawLog.SetPages.ToArray());
        // The guest wrote the workload's value where Vm.Run's guest writes it.
        Assert.Equal(0x5a5aul, raw.Memory.Read<ulong>(raw.TestSlot.Gpa + 8));
        Assert.Equal(harness.Memory.Read<ulong>(harness.TestSlot.Gpa + 3 * 4096 + 8), raw.Memory.Read<ulong>(raw.TestSlot.Gpa + 3 * 4096 + 8));
        Assert.True(t.Exits >= 1, $"{t.Exits} exits");
        Assert.True(t.RunSeconds > 0 && t.RegsSeconds > 0 && t.PrepareSeconds > 0 && t.VcpuCreateSeconds > 0, t.ToString());
    }

    [KvmFact]
    public void Raw_populate_needs_a_fresh_single_vcpu_vm_without_a_ring()
    {
        using (var ran = Vm.Create(Options))
        {
            ran.Run(Workload.Write(stride: 64 * 4096));
            Assert.Contains("fresh VM", Assert.Throws<InvalidOperationException>(() => KvmRawIoctls.Populate(ran, Workload.Write())).Message);
        }
        using (var twice = Vm.Create(Options))
        {
            KvmRawIoctls.Populate(twice, Workload.Write(stride: 64 * 4096));
            Assert.Throws<InvalidOperationException>(() => KvmRawIoctls.Populate(twice, Workload.Write()));
        }
        using (var two = Vm.Create(Options with { Vcpus = 2 }))
            Assert.Throws<NotSupportedException>(() => KvmRawIoctls.Populate(two, Workload.Write()));
        using (var ring = Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Kvm, LogDirtyPages = true, DirtyRingBytes = 4.KiB() }))
            Assert.Throws<NotSupportedException>(() => KvmRawIoctls.Populate(ring, Workload.Write()));
        using var sim = Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Sim });
        Assert.Throws<NotSupportedException>(() => KvmRawIoctls.Populate(sim, Workload.Write()));
    }
}
