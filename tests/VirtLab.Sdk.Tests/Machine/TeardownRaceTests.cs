using VirtLab.Sdk.Machine;
using VirtLab.Sdk;
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
        Backend = backend, DirtyRingBytes = new Size(ringBytes), LogDirtyPages = log, ManualProtect = ringBytes == 0 && log,
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

public sealed class SimSilentBreakage() : SilentBreakageSuite(Backend.Sim);

[RequiresKvm]
public sealed class KvmSilentBreakage() : SilentBreakageSuite(Backend.Kvm);

/// <summary>What used to be accepted and break later, on both backends alike.</summary>
public abstract class SilentBreakageSuite(Backend backend)
{
    Vm NewVm(VmOptions? o = null) => Vm.Create((o ?? new VmOptions(1.MiB())) with { Backend = backend });

    [BackendFact]
    public void Host_writes_into_system_slot_0_are_refused_unless_asked_for_and_reads_work()
    {
        using var vm = NewVm();
        var before = vm.Memory.Read<ulong>(0x1000);
        foreach (var write in new Action[]
                 {
                     () => vm.Memory.Write(0x1000, 0xdeadUL),
                     () => vm.Memory.Write(0x1000, new byte[16]),
                     () => vm.Memory.Fill(0, 4096, 0xff),
                     () => vm.Memory.Span(0x1000, 8),
                     () => vm.Memory.HostAddress(0x1000),
                     () => vm.Memory.Discard(0, 4096),
                 })
        {
            var e = Assert.Throws<InvalidOperationException>(write);
            Assert.Contains("is in system slot 0", e.Message);
            Assert.Contains("vm.Memory.WithSystemSlotWrites()", e.Message);
        }
        Assert.Equal(before, vm.Memory.Read<ulong>(0x1000));
        // The test slot is unaffected, and a workload still runs the same on both backends.
        vm.Memory.Write(vm.TestSlot.Gpa, 7UL);
        Assert.Equal(vm.TestSlot.Pages, vm.Run(Workload.Write()).Writes);
        // Deliberately: allowed, through a view that says so.
        var sys = vm.Memory.WithSystemSlotWrites();
        Assert.Same(sys, vm.Memory.WithSystemSlotWrites());
        var free = vm.SystemSlot.EndGpa - 8; // the last bytes of slot 0: not used by either backend's layout
        sys.Write(free, 0x1234UL);
        Assert.Equal(0x1234UL, vm.Memory.Read<ulong>(free));
    }

    [BackendFact]
    public void Guest_phys_bits_above_what_KVM_offers_its_guests_are_refused()
    {
        int offered;
        using (var probe = NewVm()) offered = probe.GuestPhysBits; // KVM: CPUID 0x80000008 from KVM_GET_SUPPORTED_CPUID
        if (backend == Backend.Sim)
        {
            using var wide = NewVm(new VmOptions(1.MiB()) { GuestPhysBits = 52 }); // the model has no hardware limit
            Assert.Equal(52, wide.GuestPhysBits);
            return;
        }
        if (offered >= 52) return; // nothing above it to refuse
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => NewVm(new VmOptions(1.MiB()) { GuestPhysBits = offered + 1 }));
        Assert.Contains($"guest physical address bits {offered + 1} is more than this host's KVM offers its guests ({offered}", e.Message);
    }

    [BackendFact]
    public void Undefined_enum_values_are_refused()
    {
        var b = Assert.Throws<ArgumentOutOfRangeException>(() => NewVm(new VmOptions(1.MiB()) { Backing = (Backing)9 }));
        Assert.StartsWith("Backing 9 is not a Backing; use one of Anonymous, AnonymousThp, AnonymousHugetlb2M, AnonymousHugetlb1G, Shmem, SharedHugetlb", b.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Vm.Create(new VmOptions(1.MiB()) { Backend = (Backend)7 }));
        using var vm = NewVm();
        var order = Assert.Throws<ArgumentOutOfRangeException>(() => vm.Run(Workload.Write() with { Order = (AccessOrder)9 }));
        Assert.StartsWith("Order 9 is not a AccessOrder; use one of Sequential, Random, Shuffled", order.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Run(Workload.Write() with { Sharing = (VcpuSharing)5 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Run(Workload.Write() with { Roles = (VcpuRoles)5 }));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Run(Workload.Write() with { Accesses = [new StrideAccess(Op: (AccessOp)3)] }));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddSlot(1.MiB(), backing: (Backing)6));
        Assert.Throws<ArgumentOutOfRangeException>(() => Workload.PageTableTest(PageTableStage.CreateMappings, (Backing)6));
        Assert.Throws<ArgumentOutOfRangeException>(() => Workload.PageTableTest((PageTableStage)3, Backing.Anonymous));
    }

    [BackendFact]
    public void Size_messages_name_the_right_sizes()
    {
        var max = Assert.ThrowsAny<ArgumentException>(() => NewVm(new VmOptions(new Size(long.MaxValue))));
        Assert.DoesNotContain("-", max.Message); // no negative "suggestion" from an overflowing round-up
        Assert.Contains("more than this host has", max.Message);
        var ram = HostInfo.MemTotalBytes;
        if (ram <= 0) return;
        var sys = Assert.Throws<ArgumentOutOfRangeException>(() => NewVm(new VmOptions(1.MiB()) { SystemMemory = new Size(ram / 4096 * 4096) }));
        Assert.Equal("SystemMemory", sys.ParamName);
        Assert.Contains($"plus system memory {new Size(ram / 4096 * 4096)}", sys.Message);
    }

    [BackendFact]
    public void Cancelling_the_ambient_run_token_stops_an_untokened_run()
    {
        using var vm = NewVm();
        using var cts = new CancellationTokenSource();
        using var started = new ManualResetEventSlim();
        Task<WorkloadResult> run;
        using (RunCancellation.Enter(cts.Token))
            run = vm.RunAsync(Workload.Write(stride: 64, passes: 1_000_000), _ => started.Set()); // flows into the task
        Assert.True(started.Wait(TimeSpan.FromSeconds(60)));
        cts.Cancel();
        Assert.ThrowsAny<OperationCanceledException>(() => run.GetAwaiter().GetResult());
        Assert.False(vm.IsRunning);
        Assert.Equal(CancellationToken.None, RunCancellation.Current);
        Assert.Equal(vm.TestSlot.Pages, vm.Run(Workload.Write()).Writes); // outside the scope nothing is cancelled
    }
}

public class RunCancellationTests
{
    [Fact]
    public void Waits_wake_on_the_ambient_token_and_not_outside_a_run()
    {
        using var never = new ManualResetEvent(false);
        Assert.False(RunCancellation.Wait(never, TimeSpan.FromMilliseconds(1)));
        using var cts = new CancellationTokenSource();
        using (RunCancellation.Enter(cts.Token))
        {
            Assert.Equal(cts.Token, RunCancellation.Current);
            var waiter = Task.Run(() => RunCancellation.Wait(never)); // the ambient token flows into the task
            cts.Cancel();
            Assert.ThrowsAny<OperationCanceledException>(() => waiter.GetAwaiter().GetResult());
            Assert.Throws<OperationCanceledException>(() => RunCancellation.ThrowIfCancellationRequested());
            Assert.Throws<OperationCanceledException>(() => RunCancellation.Sleep(TimeSpan.FromMinutes(1)));
            using var linked = RunCancellation.Link(CancellationToken.None);
            Assert.True(linked.Token.IsCancellationRequested);
        }
        RunCancellation.ThrowIfCancellationRequested(); // the scope ended: nothing is cancelled any more
        using var own = new CancellationTokenSource();
        using var l2 = RunCancellation.Link(own.Token);
        Assert.Equal(own.Token, l2.Token);
    }
}
