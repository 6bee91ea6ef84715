using System.Diagnostics;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;
using VirtLab.Sdk.Rendering;
using Xunit;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>The KVM backend through the public Vm API. Guest memory stays small: guest code is emulated here.</summary>
[Collection("KVM")]
public class KvmVmTests(ITestOutputHelper output)
{
    private static Vm NewVm(long memory = 2 << 20, int vcpus = 1, Backing backing = Backing.Anonymous, bool manual = false,
        bool initiallySet = false, int ring = 0, bool log = false) =>
        Vm.Create(new VmOptions(new Size(memory))
        {
            Vcpus = vcpus, Backing = backing, Backend = Backend.Kvm, ManualProtect = manual, InitiallySet = initiallySet,
            DirtyRingBytes = new Size(ring), LogDirtyPages = log,
        });

    private static long[] Pages(DirtyBitmap b) => b.SetPages.ToArray();

    [KvmFact]
    public void Test_slot_sits_at_the_top_of_guest_physical_space_and_workload_writes_land_there()
    {
        using var vm = NewVm(vcpus: 2);
        Assert.Equal(Backend.Kvm, vm.Backend);
        Assert.True(vm.IsKvm());
        Assert.True(vm.TestSlot.EndGpa > (1ul << 40), $"test slot at 0x{vm.TestSlot.Gpa:x}");
        var r = vm.Run(Workload.Write() with { WriteValue = 0xfeedface });
        Assert.Equal(512, r.Writes);
        for (long p = 0; p < vm.TestSlot.Pages; p++)
            Assert.Equal(0xfeedfaceul, vm.Memory.Read<ulong>(vm.TestSlot.Gpa + (ulong)p * 4096));
    }

    [KvmFact]
    public void Random_mixed_workload_dirties_exactly_what_the_cursor_says()
    {
        using var vm = NewVm(vcpus: 2, log: true);
        vm.TestSlot.GetDirtyLog();
        foreach (var order in new[] { AccessOrder.Random, AccessOrder.Shuffled, AccessOrder.Sequential })
        {
            var w = Workload.DirtyLogPerf(writePercent: 30, seed: 7, iterations: 2) with { Order = order };
            var plan = vm.Plan(w);
            var r = vm.Run(w);
            var expected = plan.ExpectedWrites()[1];
            var got = vm.TestSlot.GetDirtyLog();
            Assert.Equal(Pages(expected), Pages(got));
            Assert.Equal(2, r.PassTimes.Count);
            Assert.Equal(plan.AccessesPerPass(0) * 2 + plan.AccessesPerPass(1) * 2, r.Accesses);
        }
    }

    [KvmFact]
    public void After_pass_callback_runs_while_vcpus_wait_and_sees_each_pass_dirty_set()
    {
        using var vm = NewVm(vcpus: 2, log: true, manual: true);
        var seen = new List<long>();
        var r = vm.Run(Workload.DirtyLogPerf(iterations: 3), pass =>
        {
            var log = vm.TestSlot.GetDirtyLog();
            seen.Add(log.Count);
            vm.TestSlot.ClearDirtyLog(log);
        });
        Assert.Equal(new long[] { 512, 512, 512 }, seen);
        Assert.Equal(3, r.PassTimes.Count);
        output.WriteLine(r.ToString());
    }

    [KvmFact]
    public void Page_table_test_stages_run_with_even_writers_and_odd_readers()
    {
        using var vm = NewVm(memory: 4 << 20, vcpus: 2, backing: Backing.AnonymousThp);
        var create = vm.Run(Workload.PageTableTest(PageTableStage.CreateMappings, vm.Backing));
        Assert.Equal(2, create.PerVcpu[0].Writes);
        Assert.Equal(2, create.PerVcpu[1].Reads);
        vm.TestSlot.LogDirtyPages = true;
        var update = vm.Run(Workload.PageTableTest(PageTableStage.UpdateMappings, vm.Backing));
        Assert.Equal(Pages(vm.Plan(Workload.PageTableTest(PageTableStage.UpdateMappings, vm.Backing)).ExpectedWrites()[1]), Pages(vm.TestSlot.GetDirtyLog()));
        vm.TestSlot.LogDirtyPages = false;
        var adjust = vm.Run(Workload.PageTableTest(PageTableStage.AdjustMappings, vm.Backing));
        Assert.Equal(0, adjust.Writes);
        output.WriteLine($"{create}\n{update}\n{adjust}");
    }

    [KvmFact]
    public void Stats_delta_after_populating_shows_new_mappings()
    {
        foreach (var backing in new[] { Backing.Anonymous, Backing.AnonymousThp })
        {
            using var vm = NewVm(memory: 4 << 20, backing: backing);
            var stats = vm.KvmVmStats();
            var vcpuStats = vm.KvmVcpuStats(0);
            var before = stats.Snapshot();
            var vcpuBefore = vcpuStats.Snapshot();
            vm.Run(Workload.Write());
            var delta = stats.Snapshot().Since(before);
            var vcpuDelta = vcpuStats.Snapshot().Since(vcpuBefore);
            output.WriteLine($"{backing}: VM {delta}\n  vCPU {vcpuDelta}");
            long pages = vm.TestSlot.Pages;
            if (vcpuDelta["pf_fixed"] == 0 && vcpuDelta["insn_emulation"] > 0)
            {
                // Emulated execution (PVM here): guest accesses go through KVM's instruction emulator and the host
                // mapping, so no SPTEs are installed and pages_4k/pages_2m stay put. The emulator's counters move instead.
                Assert.True(vcpuDelta["insn_emulation"] >= pages, vcpuDelta.ToString());
                Assert.True(delta["mmu_pte_write"] >= pages, delta.ToString());
            }
            else if (backing == Backing.Anonymous)
                Assert.True(delta["pages_4k"] >= pages, delta.ToString());
            else
                Assert.True(delta["pages_2m"] >= 1 || delta["pages_4k"] >= pages, delta.ToString());
            var again = vm.KvmVmStatsDelta(() => vm.Run(Workload.Read()));
            // May be empty where a read pass maps nothing new; either way the table says what changed.
            var shown = Render.Text(again.ToRenderable());
            if (again.Changes.Count == 0) Assert.Contains("(no change)", shown);
            foreach (var c in again.Changes) Assert.Contains(c.Name, shown);
        }
    }

    /// <summary>
    /// A run that cannot finish by itself (a million passes) is stopped by cancellation once the guest is under way.
    /// No timed assertion (the stop latency goes to the test output; speed is the bench recipes' job): the wait is a hang guard.
    /// </summary>
    [KvmFact]
    public void Cancelling_a_long_run_stops_it_and_leaves_the_vm_usable()
    {
        using var vm = NewVm(memory: 8 << 20);
        using var cts = new CancellationTokenSource();
        using var underWay = new ManualResetEventSlim();
        var passes = 0;
        var task = vm.RunAsync(Workload.Write() with { Passes = 1_000_000 }, _ => { passes++; underWay.Set(); }, cts.Token);
        Assert.True(underWay.Wait(KvmMachineTests.HangGuard), "the first pass never completed");
        Thread.Sleep(50); // most likely inside a pass by now
        var sw = Stopwatch.StartNew();
        cts.Cancel();
        Assert.True(((IAsyncResult)task).AsyncWaitHandle.WaitOne(KvmMachineTests.HangGuard), "the run was never stopped");
        Assert.ThrowsAny<OperationCanceledException>(() => task.GetAwaiter().GetResult());
        output.WriteLine($"stopped {sw.Elapsed.TotalMilliseconds:F1} ms after cancellation, after {passes} passes");
        Assert.InRange(passes, 1, 999_999);
        Assert.False(vm.IsRunning);
        vm.Run(Workload.Read()); // still usable
    }

    /// <summary>The OS names of this process's threads (.NET names the native thread after Thread.Name, cut to 15 bytes).</summary>
    private static List<string> ThreadNames() =>
        Directory.GetDirectories("/proc/self/task").Select(t => { try { return File.ReadAllText(Path.Combine(t, "comm")).Trim(); } catch (IOException) { return ""; } }).ToList();

    /// <summary>
    /// One vCPU and no after-pass callback: the vCPU runs on the calling thread (no "vcpu0" thread exists), and it still
    /// stops on cancellation and on Dispose from another thread, which waits for the loop instead of a thread's end.
    /// </summary>
    [KvmFact]
    public void A_lone_vcpu_runs_on_the_calling_thread_and_still_stops_on_cancel_and_dispose()
    {
        var endless = Workload.Write() with { Passes = 1_000_000 };
        using (var vm = NewVm(memory: 8 << 20))
        {
            using var cts = new CancellationTokenSource();
            var task = Task.Factory.StartNew(() => vm.Run(endless, cancellation: cts.Token), TaskCreationOptions.LongRunning);
            var guard = Stopwatch.StartNew();
            while (!vm.IsRunning && guard.Elapsed < KvmMachineTests.HangGuard) Thread.Sleep(1);
            Thread.Sleep(50);
            Assert.True(vm.IsRunning);
            Assert.DoesNotContain("vcpu0", ThreadNames());
            cts.Cancel();
            Assert.True(((IAsyncResult)task).AsyncWaitHandle.WaitOne(KvmMachineTests.HangGuard), "the run was never stopped");
            Assert.ThrowsAny<OperationCanceledException>(() => task.GetAwaiter().GetResult());
            var again = vm.Run(Workload.Write(stride: 64 * 4096)); // still usable, on this thread
            Assert.True(Assert.Single(again.PassTimes) > TimeSpan.Zero, "the pass was recorded at its sync point");
            Assert.Equal(vm.TestSlot.Size.Bytes / (64 * 4096), again.Writes);
        }
        var other = NewVm(memory: 8 << 20);
        var run = Task.Factory.StartNew(() => other.Run(endless), TaskCreationOptions.LongRunning);
        var wait = Stopwatch.StartNew();
        while (!other.IsRunning && wait.Elapsed < KvmMachineTests.HangGuard) Thread.Sleep(1);
        Thread.Sleep(50);
        var dispose = Task.Run(other.Dispose);
        Assert.True(dispose.Wait(KvmMachineTests.HangGuard), "Dispose never returned");
        Assert.True(((IAsyncResult)run).AsyncWaitHandle.WaitOne(KvmMachineTests.HangGuard), "the run was never stopped");
        var e = Assert.Throws<ObjectDisposedException>(() => run.GetAwaiter().GetResult());
        Assert.Contains("disposed while a workload was running", e.Message);
    }

    /// <summary>Several vCPUs (or an after-pass callback) still run on vCPU threads.</summary>
    [KvmFact]
    public void Vcpus_with_an_after_pass_callback_run_on_vcpu_threads()
    {
        using var vm = NewVm();
        var names = new List<string>();
        vm.Run(Workload.Write(stride: 64 * 4096), _ => names = ThreadNames());
        Assert.Contains("vcpu0", names);
    }

    [KvmFact]
    public void Triple_fault_in_raw_assembly_reports_exit_reason_and_registers()
    {
        using var vm = NewVm();
        var e = Assert.Throws<KvmGuestException>(() => vm.RunAssembly(a =>
        {
            a.mov(rax, 0x7fff_0000_0000ul);
            a.mov(__qword_ptr[rax], rax);
        }));
        Assert.Equal(KvmExitReason.KVM_EXIT_SHUTDOWN, e.ExitReason);
        Assert.Contains("CR3=", e.Message);
    }

    [KvmFact]
    public void Raw_assembly_asserts_and_prints_through_the_ucall_channel()
    {
        using var vm = NewVm(vcpus: 2);
        var printed = new List<string>();
        ulong gva = vm.GuestVirtualAddress(vm.TestSlot.Gpa);
        vm.RunAssembly(a =>
        {
            a.mov(rax, gva);
            a.mov(__qword_ptr[rax + rdi * 8], rdi);
            a.UcallPrint("hello");
            a.UcallDone();
        }, onPrint: (v, s) => { lock (printed) printed.Add($"{v}:{s}"); });
        Assert.Equal(new[] { "0:hello", "1:hello" }, printed.Order());
        Assert.Equal(1ul, vm.Memory.Read<ulong>(vm.TestSlot.Gpa + 8));
        var e = Assert.Throws<GuestAssertException>(() => vm.RunAssembly(a => a.UcallAssert("value was 3, expected 4")));
        Assert.Equal("value was 3, expected 4", e.GuestMessage);
        // Pre-assembled bytes: mov eax, 0; mov edx, 0x1000; out dx, eax
        vm.RunAssembly(new byte[] { 0xB8, 0, 0, 0, 0, 0xBA, 0x00, 0x10, 0, 0, 0xEF });
    }

    [KvmFact]
    public void A_raw_assembly_run_is_the_vms_one_run()
    {
        using var vm = NewVm(vcpus: 2);
        var extra = vm.AddSlot(1.MiB(), id: 7);
        var seen = new System.Collections.Concurrent.ConcurrentQueue<string>();
        vm.RunAssembly(a =>
        {
            var skip = a.CreateLabel();
            a.test(rdi, rdi);
            a.jnz(skip);
            a.mov(rsi, 1);
            a.UcallSync(); // vCPU 0 only
            a.Label(ref skip);
        }, onSync: (_, _) =>
        {
            seen.Enqueue($"running {vm.IsRunning}");
            seen.Enqueue(Assert.Throws<InvalidOperationException>(() => vm.RemoveSlot(7)).Message);
            seen.Enqueue(Assert.Throws<InvalidOperationException>(() => vm.ResizeSlot(7, 2.MiB())).Message);
            seen.Enqueue(Assert.Throws<InvalidOperationException>(() => vm.Run(Workload.Read())).Message);
            seen.Enqueue(Assert.Throws<InvalidOperationException>(() => vm.RunAssembly(a => a.nop())).Message);
        });
        var s = seen.ToArray();
        Assert.Equal(5, s.Length);
        Assert.Equal("running True", s[0]);
        Assert.Contains("cannot remove a memslot while a workload is running", s[1]);
        Assert.Contains("cannot resize a memslot while a workload is running", s[2]);
        Assert.Contains("already running", s[3]);
        Assert.Contains("already running", s[4]);
        Assert.False(vm.IsRunning);
        vm.RemoveSlot(extra.Id); // allowed again once the run is over
    }

    [KvmFact]
    public void A_guest_message_address_that_wraps_around_is_outside_guest_memory()
    {
        using var vm = NewVm();
        var e = Assert.Throws<GuestAssertException>(() => vm.RunAssembly(a =>
        {
            a.mov(rsi, unchecked((long)ulong.MaxValue)); // gpa + length wraps past 2^64 into "valid" memory if unchecked
            a.Ucall(Ucall.Assert);
        }));
        Assert.Contains("outside guest memory", e.GuestMessage);
        var m = ((KvmVm)vm).Machine;
        unsafe
        {
            Assert.True(m.HostPointer(ulong.MaxValue, 1) == null);
            Assert.True(m.HostPointer(ulong.MaxValue - 7, 16) == null);
            Assert.True(m.HostPointer(vm.TestSlot.Gpa, (ulong)vm.TestSlot.Size.Bytes) != null);
            Assert.True(m.HostPointer(vm.TestSlot.Gpa + 1, (ulong)vm.TestSlot.Size.Bytes) == null);
        }
    }

    [KvmFact]
    public void Too_many_vcpus_is_refused_before_the_kernel_sees_it()
    {
        var max = KvmSystem.Probe().MaxVcpus;
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => NewVm(vcpus: max + 1));
        Assert.Contains("vcpus", e.Message, StringComparison.OrdinalIgnoreCase);
        Assert.Contains(max.ToString(), e.Message); // says what the limit is
        using var ok = NewVm(vcpus: 1);
        Assert.Equal(max, ok.MaxVcpus);
    }

    [KvmFact]
    public void Dirty_ring_through_the_vm_api_reports_the_written_pages()
    {
        using var vm = NewVm(ring: 64 << 10, log: true);
        vm.Run(Workload.Write(stride: 8192));
        var got = vm.DirtyRing!.HarvestBitmaps()[1];
        vm.DirtyRing.Reset();
        Assert.Equal(Enumerable.Range(0, 256).Select(i => (long)i * 2), Pages(got));
        vm.Run(Workload.Write(stride: 8192));
        Assert.DoesNotContain(vm.DirtyRing.Harvest(), g => g.SlotId == 1 && g.Offset % 2 == 1);
    }

    [KvmFact]
    public void Vm_create_run_dispose_200_times_leaves_no_fds_or_memory()
    {
        void Cycle()
        {
            using var vm = NewVm(memory: 2 << 20, vcpus: 2, log: true);
            vm.Run(Workload.Write(stride: 64 << 10));
            _ = vm.TestSlot.GetDirtyLog();
            _ = vm.KvmVmStats().Read("pages_4k");
        }
        for (int i = 0; i < 5; i++) Cycle();
        GC.Collect(); GC.WaitForPendingFinalizers();
        int fds = KvmHygieneTests.OpenFds();
        long rss = KvmHygieneTests.RssBytes();
        var sw = Stopwatch.StartNew();
        for (int i = 0; i < 200; i++) Cycle();
        GC.Collect(); GC.WaitForPendingFinalizers();
        output.WriteLine($"200 VM cycles in {sw.ElapsedMilliseconds} ms; fds {fds}→{KvmHygieneTests.OpenFds()}, RSS {rss >> 20}→{KvmHygieneTests.RssBytes() >> 20} MiB");
        Assert.Equal(fds, KvmHygieneTests.OpenFds());
        Assert.True(KvmHygieneTests.RssBytes() - rss < 24 << 20, $"RSS grew by {(KvmHygieneTests.RssBytes() - rss) >> 20} MiB");
    }

    [KvmFact]
    public void Use_after_dispose_is_refused()
    {
        var vm = NewVm();
        vm.Dispose();
        Assert.Throws<ObjectDisposedException>(() => vm.KvmVmStats());
        Assert.Throws<ObjectDisposedException>(() => vm.Run(Workload.Write()));
    }

    [KvmFact]
    public void Shared_and_thp_backings_log_exactly_the_written_pages()
    {
        foreach (var backing in new[] { Backing.Shmem, Backing.AnonymousThp })
        {
            using var vm = NewVm(memory: 4 << 20, vcpus: 2, backing: backing, log: true);
            vm.TestSlot.GetDirtyLog();
            vm.Run(Workload.Write(stride: 12288, offset: 4096 + 64));
            var expected = Enumerable.Range(0, (4 << 20) / 12288).Select(k => (long)k * 3 + 1).ToArray();
            Assert.Equal(expected, Pages(vm.TestSlot.GetDirtyLog()));
        }
    }

    [KvmFact]
    public void Failed_creation_releases_every_fd()
    {
        int before = KvmHygieneTests.OpenFds();
        for (int i = 0; i < 20; i++)
        {
            // Too-small system slot (refused before any kernel call) and an unplaceable test slot (refused after the VM exists).
            Assert.ThrowsAny<ArgumentException>(() => Vm.Create(new VmOptions(new Size(2 << 20)) { Backend = Backend.Kvm, SystemMemory = new Size(64 << 10) }));
            Assert.ThrowsAny<ArgumentException>(() => Vm.Create(new VmOptions(new Size(2 << 20)) { Backend = Backend.Kvm, TestSlotGpa = 0 }));
        }
        GC.Collect(); GC.WaitForPendingFinalizers();
        Assert.Equal(before, KvmHygieneTests.OpenFds());
    }

    [KvmFact]
    public void Doctor_report_lists_capabilities_and_module_parameters()
    {
        var sys = KvmSystem.Probe();
        Assert.True(sys.Usable);
        Assert.Equal(12, sys.ApiVersion);
        Assert.True(sys.Cap(KvmCap.MANUAL_DIRTY_LOG_PROTECT2) >= 1);
        Assert.True(sys.NrMemslots > 0);
        Assert.NotEmpty(sys.ModuleParameters);
        Assert.True(sys.Cap(KvmCap.DIRTY_LOG_RING) > 0 || sys.Cap(KvmCap.DIRTY_LOG_RING_ACQ_REL) > 0, "no dirty ring capability");
        var text = new StringWriter();
        var console = Spectre.Console.AnsiConsole.Create(new Spectre.Console.AnsiConsoleSettings
        {
            Out = new Spectre.Console.AnsiConsoleOutput(text), Ansi = Spectre.Console.AnsiSupport.No,
            ColorSystem = Spectre.Console.ColorSystemSupport.NoColors,
        });
        console.Profile.Width = 400;
        console.Write(sys.ToRenderable());
        var shown = text.ToString();
        output.WriteLine(shown);
        // what `virtlab doctor` promises: capabilities with values, module parameters, THP mode, hugetlb pools, kernel, CPU
        Assert.Contains("API version", shown);
        foreach (var c in sys.Capabilities) Assert.Contains($"{c.Name} ({c.Number})", shown);
        Assert.Contains(sys.Capabilities, c => c.Number == KvmCap.MANUAL_DIRTY_LOG_PROTECT2);
        foreach (var mod in sys.ModuleParameters.Keys) Assert.Contains($"module {mod}", shown);
        Assert.Contains("THP", shown);
        if (Directory.Exists("/sys/kernel/mm/hugepages/hugepages-2048kB")) Assert.Contains("hugetlb 2 MiB", shown);
        Assert.Contains(sys.Kernel, shown);
        Assert.Contains("CPU", shown);
    }

    [KvmFact]
    public void Dispose_from_a_guest_callback_stops_every_vcpu_and_releases_everything()
    {
        int fds = 0;
        for (int i = 0; i < 4; i++)
        {
            if (i == 1) { GC.Collect(); GC.WaitForPendingFinalizers(); fds = KvmHygieneTests.OpenFds(); } // after lazy assembly loads
            var vm = NewVm(vcpus: 2);
            var e = Record.Exception(() => vm.RunAssembly(a =>
            {
                var spin = a.CreateLabel();
                var loop = a.CreateLabel();
                a.test(rdi, rdi);
                a.jnz(spin);
                a.Label(ref loop);
                a.UcallSync();   // vCPU 0: the callback disposes the VM
                a.jmp(loop);
                a.Label(ref spin);
                a.jmp(spin);     // vCPU 1: spins in the guest until kicked
            }, onSync: (_, _) => vm.Dispose()));
            Assert.True(e is OperationCanceledException or ObjectDisposedException, e?.ToString());
            Assert.True(vm.IsDisposed);
        }
        GC.Collect(); GC.WaitForPendingFinalizers();
        Assert.Equal(fds, KvmHygieneTests.OpenFds());
    }
}
