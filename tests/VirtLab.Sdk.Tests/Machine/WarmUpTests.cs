using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>What Vm.Create does for the calls that follow it (WarmUp.BeforeVm): the thread is known to the teardown
/// guard, and after a warm-up the process's garbage has been collected once.</summary>
public class WarmUpTests
{
    [Fact]
    public void Vm_create_registers_the_calling_thread_with_the_teardown_guard()
    {
        bool before = true, after = false;
        Exception? failure = null;
        var t = new Thread(() =>
        {
            try
            {
                before = SlotGuard.ThreadRegistered;
                using var vm = Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Sim });
                after = SlotGuard.ThreadRegistered;
            }
            catch (Exception e) { failure = e; }
        });
        t.Start();
        t.Join();
        Assert.Null(failure);
        Assert.False(before);
        Assert.True(after);
    }

    [Fact]
    public void The_first_vm_after_a_warm_up_collects_the_warm_ups_garbage_once()
    {
        var report = WarmUp.Start(Backend.Sim);
        int gen2 = GC.CollectionCount(2);
        using (Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Sim }))
        {
            Assert.True(report.IsCompleted, "Vm.Create waits for the warm-up");
            Assert.True(WarmUp.Settled);
            Assert.True(GC.CollectionCount(2) > gen2, "a full collection ran");
            Assert.True(WarmUp.SettleSeconds > 0);
        }
        Assert.Empty(report.Result.Errors);
        double settle = WarmUp.SettleSeconds;
        using (Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Sim }))
            Assert.Equal(settle, WarmUp.SettleSeconds); // once per process
    }
}
