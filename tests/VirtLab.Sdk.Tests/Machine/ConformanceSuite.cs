using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>The simulator must pass the whole conformance suite everywhere.</summary>
public sealed class SimConformance() : ConformanceSuite(Backend.Sim);

/// <summary>The same suite on real KVM; skipped with the reason where /dev/kvm is not usable.</summary>
[RequiresKvm]
public sealed class KvmConformance() : ConformanceSuite(Backend.Kvm);

/// <summary>
/// One suite, both backends: workloads with a known write set must yield exactly that set from KVM_GET_DIRTY_LOG,
/// from manual get + clear in chunks and from the dirty ring; reads and writes with logging off dirty nothing.
/// Slots are small (a few MiB) so the KVM backend's emulated guest stays fast.
/// </summary>
public abstract class ConformanceSuite(Backend backend)
{
    protected Backend Backend { get; } = backend;

    const long Page = 4096;
    static readonly Size Mem = 4.MiB(); // 1024 pages

    protected Vm NewVm(Size? memory = null, int vcpus = 2, bool log = true, bool manual = false, bool initiallySet = false, int ringBytes = 0)
        => Vm.Create(new VmOptions(memory ?? Mem)
        {
            Backend = Backend, Vcpus = vcpus, LogDirtyPages = log, ManualProtect = manual, InitiallySet = initiallySet, DirtyRingBytes = new Size(ringBytes),
        });

    /// <summary>Pages 1, 4, 7, …: one 8-byte write at offset 4 KiB + 8 in every 12 KiB stride.</summary>
    static Workload EveryThirdPage => Workload.Write(stride: 3 * Page, offset: Page + 8);

    static long[] EveryThirdPageSet(long pages) => Enumerable.Range(0, (int)(pages / 3)).Select(k => 3L * k + 1).ToArray();

    [BackendFact]
    public void Creates_the_selftests_layout()
    {
        using var vm = NewVm(log: false);
        Assert.Equal(Backend, vm.Backend);
        Assert.Equal(2, vm.Vcpus);
        var sys = vm.SystemSlot;
        var test = vm.TestSlot;
        Assert.Equal(0UL, sys.Gpa);
        Assert.Equal(Mem, test.Size);
        Assert.Equal(1024, test.Pages);
        Assert.Equal(0UL, test.Gpa % (ulong)Backing.Anonymous.PageSize());
        // top of the guest-physical space: (max_gfn − npages) · 4 KiB
        Assert.Equal(((1UL << (vm.GuestPhysBits - 12)) - 1 - 1024) << 12, test.Gpa);
        Assert.False(test.LogDirtyPages);
    }

    [BackendFact]
    public void Get_dirty_log_reports_exactly_the_written_pages()
    {
        using var vm = NewVm();
        var slot = vm.TestSlot;
        var result = vm.Run(EveryThirdPage);
        Assert.Equal(EveryThirdPageSet(slot.Pages).Length, result.Writes);
        Assert.Equal(0, result.Reads);

        var log = slot.GetDirtyLog();
        Assert.Equal(EveryThirdPageSet(slot.Pages), log.ToArray());
        Assert.Equal(vm.Plan(EveryThirdPage).ExpectedWrites()[1], log);

        // legacy GET re-protects: nothing until the guest writes again, then the same set
        Assert.True(slot.GetDirtyLog().IsEmpty);
        vm.Run(EveryThirdPage);
        Assert.Equal(EveryThirdPageSet(slot.Pages), slot.GetDirtyLog().ToArray());

        // the guest's stores are in guest memory
        Assert.Equal(0x0123456789ABCDEFUL, vm.Memory.Read<ulong>(slot.Gpa + Page + 8));
        Assert.Equal(0UL, vm.Memory.Read<ulong>(slot.Gpa + 8));
    }

    [BackendFact]
    public void Reads_dirty_nothing()
    {
        using var vm = NewVm();
        var r = vm.Run(Workload.Read());
        Assert.Equal(1024, r.Reads);
        Assert.Equal(0, r.Writes);
        Assert.True(vm.TestSlot.GetDirtyLog().IsEmpty);
        vm.Run(Workload.PageTableTest(PageTableStage.AdjustMappings, Backing.Anonymous));
        Assert.True(vm.TestSlot.GetDirtyLog().IsEmpty);
    }

    [BackendFact]
    public void Host_writes_do_not_dirty_pages()
    {
        using var vm = NewVm();
        vm.Memory.Write(vm.TestSlot.Gpa + 5 * Page, 42UL);
        vm.Memory.Fill(vm.TestSlot.Gpa, 2 * Page, 0xAB);
        Assert.True(vm.TestSlot.GetDirtyLog().IsEmpty);
    }

    [BackendFact]
    public void Toggling_logging_off_and_on()
    {
        using var vm = NewVm(log: false);
        var slot = vm.TestSlot;
        vm.Run(Workload.Write());                    // logging off: nothing recorded
        slot.LogDirtyPages = true;
        Assert.True(slot.GetDirtyLog().IsEmpty);      // enabling starts from a clean, write-protected slot
        vm.Run(EveryThirdPage);
        slot.LogDirtyPages = false;
        Assert.Throws<InvalidOperationException>(() => slot.GetDirtyLog()); // no dirty_bitmap without the flag
        vm.Run(Workload.Write());
        slot.LogDirtyPages = true;
        Assert.True(slot.GetDirtyLog().IsEmpty);      // the old bitmap was freed with the flag
        vm.Run(EveryThirdPage);
        Assert.Equal(EveryThirdPageSet(slot.Pages), slot.GetDirtyLog().ToArray());
    }

    [BackendFact]
    public void Manual_protect_get_does_not_clear_and_chunked_clear_does()
    {
        using var vm = NewVm(manual: true);
        var slot = vm.TestSlot;
        vm.Run(EveryThirdPage);
        var expected = EveryThirdPageSet(slot.Pages);
        var log = slot.GetDirtyLog();
        Assert.Equal(expected, log.ToArray());
        Assert.Equal(expected, slot.GetDirtyLog().ToArray()); // GET alone clears nothing

        // Clear in 192-page chunks with the bitmap we got; the last chunk ends at the slot's end.
        for (long first = 0; first < slot.Pages; first += 192)
            slot.ClearDirtyLog(first, Math.Min(192, slot.Pages - first), log);
        Assert.True(slot.GetDirtyLog().IsEmpty);

        // Cleared pages are protected again: a second write reports them again.
        vm.Run(Workload.Write(stride: 64 * Page));
        Assert.Equal(Enumerable.Range(0, 16).Select(k => 64L * k).ToArray(), slot.GetDirtyLog().ToArray());
    }

    [BackendFact]
    public void Clear_with_a_partial_mask_clears_only_those_pages()
    {
        using var vm = NewVm(manual: true);
        var slot = vm.TestSlot;
        vm.Run(Workload.Write());
        var half = new DirtyBitmap(slot.Pages);
        half.SetRange(0, 512);
        slot.ClearDirtyLog(half);
        var left = slot.GetDirtyLog();
        Assert.Equal(512, left.Count);
        Assert.Equal(new[] { new PageRun(512, 512) }, left.Runs.ToArray());
        slot.ClearDirtyLog(0, slot.Pages); // null mask = the whole range
        Assert.True(slot.GetDirtyLog().IsEmpty);
    }

    [BackendFact]
    public void Clear_of_an_unaligned_slot_tail()
    {
        using var vm = NewVm(manual: true);
        var slot = vm.AddSlot(4.KiB() * 100, Backing.Anonymous, logDirtyPages: true); // 100 pages: 64 + a 36-page tail
        vm.Run(Workload.Write(slot: slot.Id));
        Assert.Equal(100, slot.GetDirtyLog().Count);
        slot.ClearDirtyLog(64, 36);                   // unaligned num_pages is fine when it ends at the slot's end
        Assert.Equal(new[] { new PageRun(0, 64) }, slot.GetDirtyLog().Runs.ToArray());
        slot.ClearDirtyLog(0, 100);
        Assert.True(slot.GetDirtyLog().IsEmpty);
    }

    [BackendFact]
    public void Initially_set_reports_every_page_at_first()
    {
        using var vm = NewVm(log: false, manual: true, initiallySet: true);
        var slot = vm.TestSlot;
        slot.LogDirtyPages = true;
        var first = slot.GetDirtyLog();
        Assert.Equal(slot.Pages, first.Count);
        slot.ClearDirtyLog(first);
        Assert.True(slot.GetDirtyLog().IsEmpty);
        vm.Run(EveryThirdPage);
        Assert.Equal(EveryThirdPageSet(slot.Pages), slot.GetDirtyLog().ToArray());
    }

    [BackendFact]
    public void Clear_log_alignment_is_checked_with_a_clear_message()
    {
        using var vm = NewVm(manual: true);
        var slot = vm.TestSlot;
        var e1 = Assert.Throws<ArgumentException>(() => slot.ClearDirtyLog(1, 64));
        Assert.Contains("first_page 1 is not a multiple of 64", e1.Message);
        var e2 = Assert.Throws<ArgumentException>(() => slot.ClearDirtyLog(64, 65));
        Assert.Contains("num_pages 65 is not a multiple of 64", e2.Message);
        var e3 = Assert.Throws<ArgumentOutOfRangeException>(() => slot.ClearDirtyLog(0, slot.Pages + 64));
        Assert.Contains("outside slot 1", e3.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => slot.ClearDirtyLog(slot.Pages, 0));
        Assert.Throws<ArgumentException>(() => slot.ClearDirtyLog(0, 64, new DirtyBitmap(10)));
        slot.LogDirtyPages = false;
        var e4 = Assert.Throws<InvalidOperationException>(() => slot.ClearDirtyLog(0, 64));
        Assert.Contains("not logging dirty pages", e4.Message);
        // the kernel checks first_page's alignment (EINVAL) before it looks for the slot's bitmap (ENOENT)
        var e5 = Assert.Throws<ArgumentException>(() => slot.ClearDirtyLog(1, 64));
        Assert.Contains("EINVAL", e5.Message);
    }

    [BackendFact]
    public void Dirty_ring_yields_exactly_the_written_pages_across_full_exits()
    {
        // 4 KiB ring = 256 entries, soft limit 192: one vCPU writing 341 pages must take ring-full exits.
        using var vm = NewVm(vcpus: 1, ringBytes: 4096);
        var ring = vm.DirtyRing!;
        Assert.Equal(256, ring.Entries);
        Assert.Equal(192, ring.SoftLimit);
        var r = vm.Run(EveryThirdPage);
        Assert.True(r.DirtyRingFullExits > 0);
        var entries = ring.Harvest();
        Assert.All(entries, e => Assert.Equal(1, e.SlotId));
        Assert.Equal(EveryThirdPageSet(vm.TestSlot.Pages), entries.Select(e => (long)e.Offset).Distinct().Order().ToArray());
        ring.Reset();
        Assert.Throws<InvalidOperationException>(() => vm.TestSlot.GetDirtyLog()); // ENXIO with a ring
    }

    [BackendFact]
    public void Dirty_ring_reports_a_page_again_only_after_reset()
    {
        using var vm = NewVm(ringBytes: 16384); // 1024 entries: no full exits for 100 pages
        var ring = vm.DirtyRing!;
        var w = Workload.Write(stride: 8 * Page);  // 128 pages
        vm.Run(w);
        var first = ring.Harvest();
        Assert.Equal(Enumerable.Range(0, 128).Select(k => (ulong)(8 * k)).ToArray(), first.Select(e => e.Offset).Order().ToArray());
        vm.Run(w);
        // Harvested but not reset: the pages stay writable, so an ideal MMU pushes nothing. Real KVM only promises
        // "at least once": it pushes again when it rebuilt the SPTEs (shadow paging, zaps), so only the Sim is exact here.
        var again = ring.Harvest();
        if (Backend == Backend.Sim) Assert.Empty(again);
        else Assert.All(again, e => Assert.Equal(0UL, e.Offset % 8));
        Assert.Equal(first.Count + again.Count, ring.Reset()); // every harvested entry is recycled
        vm.Run(w);                                     // re-protected by the reset: pushed again
        Assert.Equal(first.Select(e => e.Offset).Order().ToArray(), ring.Harvest().Select(e => e.Offset).Order().ToArray());
        var bitmaps = ring.HarvestBitmaps();
        Assert.Empty(bitmaps);
    }

    [BackendFact]
    public void Dirty_ring_ignores_slots_that_do_not_log()
    {
        using var vm = NewVm(log: false, ringBytes: 16384);
        vm.Run(Workload.Write(stride: 8 * Page));
        Assert.Empty(vm.DirtyRing!.Harvest());
        vm.TestSlot.LogDirtyPages = true;
        vm.Run(Workload.Write(stride: 8 * Page));
        var b = vm.DirtyRing.HarvestBitmaps();
        Assert.Equal(Enumerable.Range(0, 128).Select(k => 8L * k).ToArray(), b[1].ToArray());
        Assert.Equal([1], b.Keys.Order()); // the system slot never logs
    }

    [BackendFact]
    public void Random_mixed_workload_dirties_exactly_the_planned_writes()
    {
        using var vm = NewVm(vcpus: 3);
        var w = new Workload { WritePercent = 30, Order = AccessOrder.Random, Seed = 7, Passes = 2 };
        var expected = vm.Plan(w).ExpectedWrites()[1];
        var r = vm.Run(w);
        Assert.Equal(3 * 2, r.PerVcpu.Sum(v => v.PassTimes.Count));
        Assert.Equal(2 * 1024, r.Accesses);
        Assert.InRange(r.Writes, 1, 2 * 1024 - 1);
        Assert.Equal(expected, vm.TestSlot.GetDirtyLog());
    }

    [BackendFact]
    public void Shuffled_order_touches_every_stride_once()
    {
        using var vm = NewVm(vcpus: 2);
        var w = new Workload { Order = AccessOrder.Shuffled, Seed = 3, Stride = 2 * Page };
        var r = vm.Run(w);
        Assert.Equal(512, r.Writes);
        Assert.Equal(Enumerable.Range(0, 512).Select(k => 2L * k).ToArray(), vm.TestSlot.GetDirtyLog().ToArray());
    }

    [BackendFact]
    public void Page_table_test_stages_on_even_writers_and_odd_readers()
    {
        using var vm = NewVm(vcpus: 2, log: false);
        var slot = vm.TestSlot;
        var create = vm.Run(Workload.PageTableTest(PageTableStage.CreateMappings, Backing.Anonymous));
        Assert.Equal(VcpuRole.Writer, create.PerVcpu[0].Role);
        Assert.Equal(VcpuRole.Reader, create.PerVcpu[1].Role);
        Assert.Equal(1024, create.PerVcpu[0].Writes);
        Assert.Equal(1024, create.PerVcpu[1].Reads);
        slot.LogDirtyPages = true;
        var update = vm.Run(Workload.PageTableTest(PageTableStage.UpdateMappings, Backing.Anonymous));
        Assert.Equal(2 * 1024, update.Writes);
        Assert.Equal(slot.Pages, slot.GetDirtyLog().Count);
        slot.LogDirtyPages = false;
        var adjust = vm.Run(Workload.PageTableTest(PageTableStage.AdjustMappings, Backing.Anonymous));
        Assert.Equal(2 * 1024, adjust.Reads);
    }

    [BackendFact]
    public void Perf_test_passes_sync_and_the_host_collects_between_them()
    {
        using var vm = NewVm(vcpus: 2, manual: true);
        var slot = vm.TestSlot;
        var w = Workload.DirtyLogPerf(writePercent: 100, iterations: 3) with { Stride = 2 * Page };
        var perPass = new List<long>();
        var evenPages = Enumerable.Range(0, 512).Select(k => 2L * k).ToArray();
        var r = vm.Run(w, afterPass: pass =>
        {
            var b = slot.GetDirtyLog();
            perPass.Add(b.Count);
            Assert.Equal(evenPages, b.ToArray()); // exactly the pages written in this pass
            slot.ClearDirtyLog(b);
        });
        Assert.Equal(new long[] { 512, 512, 512 }, perPass);
        Assert.Equal(3, r.PassTimes.Count);
        Assert.True(slot.GetDirtyLog().IsEmpty);
    }

    [BackendFact]
    public void Without_sync_points_after_pass_is_never_called()
    {
        using var vm = NewVm(vcpus: 2);
        var slot = vm.TestSlot;
        var calls = new List<int>();
        var r = vm.Run(Workload.Write(passes: 3, stride: 4 * Page) with { SyncEachPass = false }, afterPass: calls.Add);
        Assert.Empty(calls);
        Assert.Equal(3 * 256, r.Writes);
        Assert.Equal(3, r.PassTimes.Count);
        Assert.Equal(Enumerable.Range(0, 256).Select(k => 4L * k).ToArray(), slot.GetDirtyLog().ToArray());
        // with sync points it is called once per pass, in order
        vm.Run(Workload.Write(passes: 3, stride: 4 * Page), afterPass: calls.Add);
        Assert.Equal(new[] { 0, 1, 2 }, calls);
    }

    [BackendFact]
    public void Dirty_log_calls_racing_resizes_fail_cleanly_or_see_a_whole_slot()
    {
        using var vm = NewVm(log: false);
        const ulong at = 1UL << 32;
        vm.AddSlot(256.KiB(), gpa: at, id: 7, logDirtyPages: true);
        using var stop = new CancellationTokenSource();
        var unexpected = new System.Collections.Concurrent.ConcurrentQueue<Exception>();
        long gets = 0;
        var getter = Task.Run(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                var slot = vm.Slots.FirstOrDefault(x => x.Id == 7);
                if (slot is null) continue;
                var b = new DirtyBitmap(slot.Pages);
                try
                {
                    slot.GetDirtyLog(b);
                    slot.ClearDirtyLog(b);
                    Interlocked.Increment(ref gets);
                }
                // the slot was retired meanwhile (InvalidOperationException), or deleted in the kernel just before (ENOENT)
                catch (Exception e) when (e is InvalidOperationException or VirtLab.Sdk.Machine.Kvm.KvmException { Errno: 2 }) { }
                catch (Exception e) { unexpected.Enqueue(e); }
            }
        });
        Assert.True(SpinWait.SpinUntil(() => Interlocked.Read(ref gets) > 0, TimeSpan.FromSeconds(30)), "the getter never ran");
        for (int i = 0; i < 100; i++)
        {
            vm.ResizeSlot(7, i % 2 == 0 ? 1.MiB() : 256.KiB());
            Thread.Yield();
        }
        stop.Cancel();
        getter.Wait();
        Assert.Empty(unexpected);
        Assert.Equal(256, vm.Slot(7).Pages * 4); // 256 KiB = 64 pages after an even number of resizes
    }

    [BackendFact]
    public void Workload_over_a_gpa_range_spanning_two_slots()
    {
        using var vm = NewVm(vcpus: 2);
        var test = vm.TestSlot;
        var below = vm.AddSlot(1.MiB(), logDirtyPages: true); // placed right below the test slot
        Assert.Equal(test.Gpa, below.EndGpa);
        var w = Workload.Write(stride: 16 * Page).In(below.Gpa, 2.MiB().Bytes);
        vm.Run(w);
        Assert.Equal(Enumerable.Range(0, 16).Select(k => 16L * k).ToArray(), below.GetDirtyLog().ToArray());
        Assert.Equal(Enumerable.Range(0, 16).Select(k => 16L * k).ToArray(), test.GetDirtyLog().ToArray());
    }

    [BackendFact]
    public void Slots_can_be_added_resized_and_removed()
    {
        using var vm = NewVm(log: false);
        var s = vm.AddSlot(1.MiB(), id: 5, logDirtyPages: true); // right below the test slot
        Assert.Equal(5, s.Id);
        Assert.Equal(vm.TestSlot.Gpa, s.EndGpa);
        Assert.Same(s, vm.Memory.SlotAt(s.Gpa + 100));
        var at = s.Gpa;
        vm.Run(Workload.Write(slot: 5));
        Assert.Equal(256, s.GetDirtyLog().Count);
        var e = Assert.Throws<ArgumentException>(() => vm.ResizeSlot(5, 2.MiB())); // would grow into the test slot
        Assert.Contains("overlaps slot 1", e.Message);
        var bigger = vm.ResizeSlot(5, 512.KiB());
        Assert.Equal(128, bigger.Pages);
        Assert.Equal(at, bigger.Gpa);
        Assert.True(bigger.LogDirtyPages);
        Assert.Throws<InvalidOperationException>(() => s.GetDirtyLog()); // the old slot object is gone
        vm.Run(Workload.Write(slot: 5));
        Assert.Equal(128, bigger.GetDirtyLog().Count);
        vm.RemoveSlot(5);
        Assert.Throws<ArgumentException>(() => vm.Slot(5));
        Assert.False(vm.Memory.Contains(at));
        Assert.Throws<InvalidOperationException>(() => vm.RemoveSlot(0));
    }

    [BackendFact]
    public void Guest_memory_discard_and_populate()
    {
        using var vm = NewVm(log: false);
        var gpa = vm.TestSlot.Gpa;
        Assert.Equal(0, vm.Memory.Resident(gpa, 1.MiB()).Bytes); // nothing touched yet
        vm.Memory.Populate(gpa, 1.MiB());
        Assert.Equal(1.MiB(), vm.Memory.Resident(gpa, 1.MiB()));
        Assert.Equal(0, vm.Memory.Resident(gpa + 1.MiB(), 1.MiB()).Bytes); // only the populated range
        Assert.True(vm.Memory.ResidentBytes >= 1.MiB(), $"VM resident {vm.Memory.ResidentBytes}");
        vm.Memory.Write(gpa + 64, 0xfeedUL);
        vm.Memory.Discard(gpa, 1.MiB());
        Assert.Equal(0, vm.Memory.Resident(gpa, 1.MiB()).Bytes);
        Assert.Equal(0UL, vm.Memory.Read<ulong>(gpa + 64));
    }

    [BackendFact]
    public void Overlapping_slots_are_rejected_before_any_kernel_call()
    {
        using var vm = NewVm(log: false);
        var t = vm.TestSlot;
        var e = Assert.Throws<ArgumentException>(() => vm.AddSlot(2.MiB(), gpa: t.Gpa + 1.MiB()));
        Assert.Contains("overlaps slot 1", e.Message);
        Assert.Contains("EEXIST", e.Message);
        Assert.Throws<ArgumentException>(() => vm.AddSlot(1.MiB(), gpa: 4096 * 3 + 1));      // unaligned gpa
        Assert.Throws<ArgumentException>(() => vm.AddSlot(6000.Bytes(), gpa: 1UL << 32));    // unaligned size
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddSlot(1.MiB(), gpa: vm.MaxGpa - 4096));
        Assert.Throws<ArgumentException>(() => vm.AddSlot(1.MiB(), gpa: 1UL << 32, id: 1)); // id in use
        Assert.Equal(2, vm.Slots.Count);
    }

    [BackendFact]
    public void Access_outside_guest_memory_and_use_after_dispose()
    {
        var vm = NewVm(log: false);
        var t = vm.TestSlot;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => vm.Memory.Read<ulong>(1UL << 33));
        Assert.Contains("outside guest memory", e.Message);
        Assert.Contains("slot 1", e.Message);
        var cross = Assert.Throws<ArgumentOutOfRangeException>(() => vm.Memory.Read<ulong>(t.EndGpa - 4));
        Assert.Contains("runs past the end of slot 1", cross.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Memory.Span(t.Gpa, (int)t.Size.Bytes + 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Run(Workload.Write().In(t.EndGpa, 4096)));
        vm.Dispose();
        Assert.Throws<ObjectDisposedException>(() => vm.Memory.Read<ulong>(t.Gpa));
        Assert.Throws<ObjectDisposedException>(() => t.GetDirtyLog());
        Assert.Throws<ObjectDisposedException>(() => vm.Run(Workload.Write()));
        Assert.Throws<ObjectDisposedException>(() => vm.AddSlot(1.MiB()));
        Assert.Throws<ObjectDisposedException>(() => t.LogDirtyPages = true);
        vm.Dispose(); // twice is fine
    }

    [BackendFact]
    public void A_long_run_can_be_cancelled()
    {
        using var vm = NewVm(log: false);
        using var cts = new CancellationTokenSource();
        var passes = 0;
        var w = Workload.Read() with { Passes = 1_000_000 };
        Assert.ThrowsAny<OperationCanceledException>(() => vm.Run(w, _ => { if (++passes == 3) cts.Cancel(); }, cts.Token));
        Assert.False(vm.IsRunning);
        vm.Run(Workload.Read()); // usable afterwards
    }

    [BackendFact]
    public void Dispose_during_a_run_stops_it()
    {
        var vm = NewVm(log: false);
        using var started = new ManualResetEventSlim();
        var run = vm.RunAsync(Workload.Read() with { Passes = 1_000_000 }, p => { if (p == 2) started.Set(); });
        Assert.True(started.Wait(TimeSpan.FromSeconds(60)));
        vm.Dispose();
        var e = Assert.Throws<ObjectDisposedException>(() => run.GetAwaiter().GetResult());
        Assert.Contains("was disposed while a workload was running on it", e.Message);
        Assert.True(vm.IsDisposed);
    }

    [BackendFact]
    public void Dispose_from_inside_after_pass_does_not_hang()
    {
        var vm = NewVm(log: false);
        var e = Assert.Throws<ObjectDisposedException>(() => vm.Run(Workload.Read() with { Passes = 10 }, p => { if (p == 1) vm.Dispose(); }));
        Assert.Contains("was disposed while a workload was running on it", e.Message);
        Assert.Throws<ObjectDisposedException>(() => vm.Memory.Read<byte>(0));
    }
}
