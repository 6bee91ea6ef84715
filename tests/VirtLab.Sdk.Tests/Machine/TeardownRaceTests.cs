using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

public sealed class SimTeardownRaces() : TeardownRaceSuite(Backend.Sim);

[RequiresKvm]
public sealed class KvmTeardownRaces() : TeardownRaceSuite(Backend.Kvm);

/// <summary>
/// Host access to guest memory, dirty-log calls and dirty-ring reads racing Dispose, RemoveSlot and ResizeSlot on
/// another thread: each access completes on live memory or throws a clear exception — the process never crashes (before
/// the teardown guard, each of these loops took the test host down with SIGSEGV within its first few hundred rounds).
/// Every round starts the teardown while the other thread is in the middle of its access loop.
/// </summary>
public abstract class TeardownRaceSuite(Backend backend)
{
    const int Rounds = 200;

    Vm NewVm(int ringBytes = 0, bool log = false) => Vm.Create(new VmOptions(1.MiB())
    {
        Backend = backend, DirtyRingBytes = ringBytes, LogDirtyPages = log, ManualProtect = ringBytes == 0 && log,
    });

    /// <summary>Runs <paramref name="access"/> in a loop on another thread until it throws (as it must once the teardown
    /// took its object away); once it made a few calls, runs <paramref name="teardown"/> here. Returns what it threw.</summary>
    static Exception Race(Action access, Action teardown)
    {
        Exception? failure = null;
        long calls = 0;
        var t = new Thread(() =>
        {
            try
            {
                while (true)
                {
                    access();
                    Interlocked.Increment(ref calls);
                }
            }
            catch (Exception e) { failure = e; }
        });
        t.Start();
        var spin = new SpinWait();
        while (Interlocked.Read(ref calls) < 3 && t.IsAlive) spin.SpinOnce();
        teardown();
        t.Join();
        return failure!;
    }

    static void AssertDisposed(Exception e)
    {
        Assert.True(e is ObjectDisposedException, $"expected ObjectDisposedException, got {e}");
        Assert.Contains("disposed", e.Message);
    }

    [BackendFact]
    public void Guest_memory_reads_and_writes_racing_dispose_never_touch_unmapped_memory()
    {
        var buffer = new byte[64 << 10];
        for (int i = 0; i < Rounds / 2; i++)
        {
            var vm = NewVm();
            var gpa = vm.TestSlot.Gpa;
            ulong k = 0;
            var e = Race(() =>
            {
                var at = gpa + (++k * 4104 & 0xffff8);
                vm.Memory.Write(at, k);
                Assert.Equal(k, vm.Memory.Read<ulong>(at));
                vm.Memory.Read(gpa + 4096, buffer);
            }, vm.Dispose);
            AssertDisposed(e);
        }
    }

    [BackendFact]
    public void Guest_memory_access_racing_RemoveSlot_completes_or_says_the_slot_is_gone()
    {
        using var vm = NewVm();
        for (int i = 0; i < Rounds; i++)
        {
            var slot = vm.AddSlot(1.MiB(), gpa: 1UL << 30);
            ulong k = 0;
            var e = Race(() =>
            {
                vm.Memory.Write(slot.Gpa + (++k * 8 & 0xffff8), k);
                _ = vm.Memory.ResidentBytes; // mincore over every slot, including one being removed
            }, () => vm.RemoveSlot(slot.Id));
            Assert.True(e is InvalidOperationException { Message: var m } && m.Contains($"memslot {slot.Id} was removed")
                        || e is ArgumentOutOfRangeException { Message: var m2 } && m2.Contains("is outside guest memory"),
                $"unexpected: {e}");
        }
        Assert.Equal([0, 1], vm.Slots.Select(s => s.Id));
    }

    [BackendFact]
    public void Guest_memory_and_dirty_log_racing_ResizeSlot_complete_or_say_the_slot_is_gone()
    {
        using var vm = NewVm(log: true);
        var slot = vm.AddSlot(1.MiB(), gpa: 1UL << 30, logDirtyPages: true);
        for (int i = 0; i < Rounds / 4; i++)
        {
            var current = slot;
            var e = Race(() =>
            {
                vm.Memory.Write(current.Gpa + 8, 1UL);
                current.GetDirtyLog();
            }, () => slot = vm.ResizeSlot(current.Id, (i % 2 == 0 ? 2 : 1).MiB()));
            // Never a raw ENOENT from the kernel: the slot is retired before its kernel memslot is deleted.
            Assert.True(e is InvalidOperationException { Message: var m } && m.Contains($"memslot {current.Id} was removed")
                        || e is ArgumentOutOfRangeException { Message: var m2 } && m2.Contains("is outside guest memory"),
                $"unexpected: {e}");
        }
        Assert.Equal(vm.Slot(slot.Id).Size, slot.Size);
    }

    [BackendFact]
    public void Dirty_ring_harvest_and_reset_racing_dispose_throw_ObjectDisposedException()
    {
        for (int i = 0; i < Rounds / 2; i++)
        {
            var vm = NewVm(ringBytes: 4096, log: true);
            var ring = vm.DirtyRing!;
            var e = Race(() =>
            {
                ring.Harvest();
                ring.Reset();
            }, vm.Dispose);
            AssertDisposed(e);
        }
    }
}
