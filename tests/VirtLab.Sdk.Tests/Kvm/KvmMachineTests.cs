using System.Diagnostics;
using System.Runtime.InteropServices;
using Iced.Intel;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Native;
using VirtLab.Sdk.Rendering;
using Xunit;
using Xunit.Abstractions;
using static Iced.Intel.AssemblerRegisters;

namespace VirtLab.Sdk.Tests.Kvm;

[Collection("KVM")]
public unsafe class KvmMachineTests(ITestOutputHelper output)
{
    internal static byte[] Assemble(Action<Assembler> body, ulong rip = SystemLayout.CodeGpa) => KvmRig.Assemble(body, rip);

    [Fact]
    public void Uapi_sizes_and_ioctl_numbers_match_the_header()
    {
        Assert.Equal(32, sizeof(kvm_userspace_memory_region));
        Assert.Equal(16, sizeof(kvm_dirty_log));
        Assert.Equal(24, sizeof(kvm_clear_dirty_log));
        Assert.Equal(104, sizeof(kvm_enable_cap));
        Assert.Equal(144, sizeof(kvm_regs));
        Assert.Equal(312, sizeof(kvm_sregs));
        Assert.Equal(24, sizeof(kvm_segment));
        Assert.Equal(40, sizeof(kvm_cpuid_entry2));
        Assert.Equal(16, sizeof(kvm_dirty_gfn));
        Assert.Equal(24, sizeof(kvm_stats_header));
        Assert.Equal(16, sizeof(kvm_stats_desc));
        // struct kvm_run: header, the exit union at 32 (256 bytes), kvm_valid_regs at 288, the 2 KiB sync-regs area.
        Assert.Equal(2352, sizeof(kvm_run));
        Assert.Equal(1, (int)Marshal.OffsetOf<kvm_run>(nameof(kvm_run.immediate_exit)));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_run>(nameof(kvm_run.exit_reason)));
        Assert.Equal(14, (int)Marshal.OffsetOf<kvm_run>(nameof(kvm_run.flags)));
        Assert.Equal(32, (int)Marshal.OffsetOf<kvm_run>(nameof(kvm_run.io)));
        Assert.Equal(288, (int)Marshal.OffsetOf<kvm_run>(nameof(kvm_run.kvm_valid_regs)));
        Assert.Equal(16, sizeof(kvm_run_io));
        Assert.Equal(2, (int)Marshal.OffsetOf<kvm_run_io>(nameof(kvm_run_io.port)));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_run_io>(nameof(kvm_run_io.data_offset)));
        Assert.Equal(16, (int)Marshal.OffsetOf<kvm_run_mmio>(nameof(kvm_run_mmio.len)));
        Assert.Equal(20, (int)Marshal.OffsetOf<kvm_run_mmio>(nameof(kvm_run_mmio.is_write)));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_run_fail_entry>(nameof(kvm_run_fail_entry.cpu)));
        Assert.Equal(136, sizeof(kvm_run_internal));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_run_internal>("data"));
        Assert.Equal(4, (int)Marshal.OffsetOf<kvm_run_system_event>(nameof(kvm_run_system_event.ndata)));
        // The memslot and dirty-log argument structs, member by member (<linux/kvm.h>).
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_userspace_memory_region>(nameof(kvm_userspace_memory_region.guest_phys_addr)));
        Assert.Equal(24, (int)Marshal.OffsetOf<kvm_userspace_memory_region>(nameof(kvm_userspace_memory_region.userspace_addr)));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_dirty_log>(nameof(kvm_dirty_log.dirty_bitmap)));
        Assert.Equal(4, (int)Marshal.OffsetOf<kvm_clear_dirty_log>(nameof(kvm_clear_dirty_log.num_pages)));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_clear_dirty_log>(nameof(kvm_clear_dirty_log.first_page)));
        Assert.Equal(16, (int)Marshal.OffsetOf<kvm_clear_dirty_log>(nameof(kvm_clear_dirty_log.dirty_bitmap)));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_dirty_gfn>(nameof(kvm_dirty_gfn.offset)));
        Assert.Equal(8, (int)Marshal.OffsetOf<kvm_enable_cap>("args"));
        // Values from <linux/kvm.h> on x86-64.
        Assert.Equal((nuint)0xAE80, KvmIoctl.KVM_RUN);
        Assert.Equal((nuint)0x4020AE46, KvmIoctl.KVM_SET_USER_MEMORY_REGION);
        Assert.Equal((nuint)0x4010AE42, KvmIoctl.KVM_GET_DIRTY_LOG);
        Assert.Equal((nuint)0xC018AEC0, KvmIoctl.KVM_CLEAR_DIRTY_LOG);
        Assert.Equal((nuint)0x8090AE81, KvmIoctl.KVM_GET_REGS);
        Assert.Equal((nuint)0x4138AE84, KvmIoctl.KVM_SET_SREGS);
        Assert.Equal((nuint)0x4068AEA3, KvmIoctl.KVM_ENABLE_CAP);
        Assert.Equal((nuint)0xAEC7, KvmIoctl.KVM_RESET_DIRTY_RINGS);
        Assert.Equal((nuint)0xAECE, KvmIoctl.KVM_GET_STATS_FD);
    }

    [KvmFact]
    public void Done_ucall_ends_the_run()
    {
        using var r = new KvmRig();
        r.Run(a =>
        {
            a.UcallDone();
            a.hlt();
        });
    }

    [KvmFact]
    public void Triple_fault_gives_a_clear_exception_with_registers()
    {
        using var r = new KvmRig();
        // Load from an unmapped guest-virtual address: #PF with no IDT → #DF → triple fault.
        var e = Assert.Throws<KvmGuestException>(() => r.Run(a =>
        {
            a.mov(rax, 0x7fff_0000_0000ul);
            a.mov(rbx, __qword_ptr[rax]);
            a.hlt();
        }));
        Assert.Equal(KvmExitReason.KVM_EXIT_SHUTDOWN, e.ExitReason);
        Assert.NotNull(e.Registers);
        Assert.Contains("triple fault", e.Message);
        Assert.Contains("RIP=", e.Message);
    }

    [KvmFact]
    public void Guest_assert_carries_the_guest_message()
    {
        using var r = new KvmRig();
        ulong msg = r.PutString("x != 42");
        var e = Assert.Throws<GuestAssertException>(() => r.Run(a =>
        {
            a.UcallAssert(msg);
            a.hlt();
        }));
        Assert.Equal("x != 42", e.GuestMessage);
    }

    [KvmFact]
    public void Sync_passes_rsi_and_runs_on_every_vcpu()
    {
        using var r = new KvmRig(vcpus: 2);
        var seen = new System.Collections.Concurrent.ConcurrentBag<(int, ulong)>();
        r.Run(a =>
        {
            var loop = a.CreateLabel();
            a.xor(esi, esi);
            a.Label(ref loop);
            a.UcallSync();
            a.inc(rsi);
            a.cmp(rsi, 3);
            a.jb(loop);
            a.UcallDone();
        }, new GuestCallbacks { OnSync = (v, pass, _) => seen.Add((v, pass)) });
        Assert.Equal(6, seen.Count);
        Assert.Equal(new ulong[] { 0, 1, 2 }, seen.Where(x => x.Item1 == 1).Select(x => x.Item2).OrderBy(x => x));
    }

    /// <summary>
    /// The guest syncs once and then spins in <c>jmp</c> forever: it never exits on its own, so the run can only end
    /// through the kick (<c>immediate_exit</c> + signal). No timed assertion (speed is the bench recipes' job): the
    /// wait is a hang guard, and the stop latency is written to the test output.
    /// </summary>
    [KvmFact]
    public void Cancellation_stops_a_spinning_vcpu()
    {
        using var r = new KvmRig();
        using var cts = new CancellationTokenSource();
        using var synced = new ManualResetEventSlim();
        var task = Task.Run(() => r.Run(a =>
        {
            var loop = a.CreateLabel();
            a.UcallSync();
            a.Label(ref loop);
            a.inc(rax);
            a.jmp(loop);
        }, new GuestCallbacks { OnSync = (_, _, _) => synced.Set() }, cts.Token));
        Assert.True(synced.Wait(HangGuard), "the guest never reached its sync point");
        Thread.Sleep(50); // most likely back in the guest's loop by now; cancelling before re-entry must work as well
        var sw = Stopwatch.StartNew();
        cts.Cancel();
        Assert.True(((IAsyncResult)task).AsyncWaitHandle.WaitOne(HangGuard), "the spinning vCPU was never stopped: the kick did not reach it");
        Assert.ThrowsAny<OperationCanceledException>(() => task.GetAwaiter().GetResult());
        output.WriteLine($"cancellation took {sw.Elapsed.TotalMilliseconds:F1} ms");
        // The VM is reusable after a cancelled run.
        r.Run(a => a.UcallDone());
    }

    /// <summary>How long a liveness wait may take before the test fails instead of hanging (not a speed bound).</summary>
    internal static readonly TimeSpan HangGuard = TimeSpan.FromSeconds(30);

    [KvmFact]
    public void Memslot_at_the_top_of_guest_physical_space_is_reachable()
    {
        using var r = new KvmRig();
        const ulong size = 4ul << 20;
        ulong gpa = (1ul << r.M.GuestPhysBits) - size;
        nint host = r.AddSlot(1, gpa, size);
        r.M.PrepareLayout();
        ulong gva = r.M.GvaOf(gpa + 8192);
        r.Run(a =>
        {
            a.mov(rax, gva);
            a.mov(__qword_ptr[rax], rdi);
            a.add(__qword_ptr[rax], 0x1234);
            a.UcallDone();
        });
        Assert.Equal(0x1234ul, *(ulong*)(host + 8192));
    }

    [KvmFact]
    public void Vm_stats_are_readable_by_name_and_as_a_delta()
    {
        using var r = new KvmRig();
        var before = r.M.VmStats.Snapshot();
        Assert.True(r.M.VmStats.Has("pages_4k"));
        r.Run(a => a.UcallDone());
        var delta = r.M.VmStats.Snapshot().Since(before);
        // The delta shows what it holds: a row per changed counter with its signed change, or "(no change)".
        var text = Render.Text(delta.ToRenderable());
        Assert.Contains($"{delta.Id} Δ over", text);
        foreach (var c in delta.Changes) Assert.Matches($@"{c.Name}\s.*{(c.Delta >= 0 ? @"\+" : "-")}{Math.Abs(c.Delta):N0}", text);
        if (delta.Changes.Count == 0) Assert.Contains("(no change)", text);
        var v = r.M.VcpuStats(0).Snapshot();
        Assert.True(v["exits"] > 0, $"vCPU 0 ran a guest that exits through port I/O, yet exits = {v["exits"]}");
        // (not io_exits: under kvm_pvm's emulated execution the ucall's port I/O does not bump it)
    }

    [Kvm1GPagesFact]
    public void One_GiB_guest_pages_map_a_GiB_aligned_slot()
    {
        using var r = new KvmRig();
        r.M.Use1GPages = true;
        const ulong size = 1ul << 30, gpa = 1ul << 32;
        nint host = r.AddSlot(1, gpa, size, noReserve: true);
        r.M.PrepareLayout();
        ulong last = r.M.GvaOf(gpa + size - 8);
        r.Run(a =>
        {
            a.mov(rax, last);
            a.mov(__qword_ptr[rax], 0x77);
            a.UcallDone();
        });
        Assert.Equal(0x77ul, *(ulong*)(host + (nint)size - 8));
    }

    [KvmFact]
    public void Access_to_a_gpa_without_memslot_is_an_mmio_exit_with_the_address()
    {
        using var r = new KvmRig();
        const ulong size = 2ul << 20, gpa = 1ul << 32;
        r.AddSlot(1, gpa, size);
        r.M.PrepareLayout();
        ulong gva = r.M.GvaOf(gpa + 0x40);
        // Delete the memslot behind the harness's back (the VM fd's own ioctl): the guest page tables still map it.
        r.M.VmFdHandle.SetUserMemoryRegion(1, 0, gpa, 0, 0);
        var e = Assert.Throws<KvmGuestException>(() => r.Run(a =>
        {
            a.mov(rax, gva);
            a.mov(__dword_ptr[rax], 0x1234);
            a.UcallDone();
        }));
        Assert.Equal(KvmExitReason.KVM_EXIT_MMIO, e.ExitReason);
        Assert.Contains($"gpa 0x{gpa + 0x40:x}", e.Message);
    }
}
