using Iced.Intel;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Native;
using Xunit;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>
/// Exit decoding, the ucall ABI and the gva windows, without /dev/kvm: a synthesized <c>struct kvm_run</c> page
/// stands in for the vCPU mapping, the windows are pure arithmetic.
/// </summary>
public unsafe class KvmExitTests
{
    private const int MmapSize = 4096; // a vCPU mmap is at least one page (kvm_run, then the PIO data page on x86)

    private static KvmExit Decode(Action<nint> fill)
    {
        var page = new byte[MmapSize];
        fixed (byte* p = page)
        {
            fill((nint)p);
            return KvmExit.Decode((kvm_run*)p, MmapSize);
        }
    }

    private static KvmExit IoExit(byte direction, byte size, ushort port, uint count, ulong dataOffset, uint value) => Decode(p =>
    {
        var run = (kvm_run*)p;
        run->exit_reason = (uint)KvmExitReason.KVM_EXIT_IO;
        run->io = new kvm_run_io { direction = direction, size = size, port = port, count = count, data_offset = dataOffset };
        if (dataOffset + 4 <= MmapSize) *(uint*)((byte*)p + dataOffset) = value;
    });

    [Fact]
    public void An_out_exit_decodes_port_size_count_and_the_value_at_data_offset()
    {
        var io = Assert.IsType<KvmExit.Io>(IoExit(KvmConst.KVM_EXIT_IO_OUT, 4, Ucall.Port, 1, 0x200, 0xdead_beef));
        Assert.Equal(new KvmExit.Io(true, 4, Ucall.Port, 1, 0xdead_beef), io);
        Assert.Equal(KvmExitReason.KVM_EXIT_IO, io.Reason);
    }

    [Fact]
    public void A_narrower_out_keeps_only_its_bytes()
    {
        var io = Assert.IsType<KvmExit.Io>(IoExit(KvmConst.KVM_EXIT_IO_OUT, 1, 0x80, 1, 0x200, 0x1234_5678));
        Assert.Equal(0x78u, io.Value);
    }

    [Fact]
    public void A_data_offset_outside_the_mapping_is_not_read()
    {
        // KVM never does this, but the offset comes from the shared page: decoding must not read past the mapping.
        var io = Assert.IsType<KvmExit.Io>(IoExit(KvmConst.KVM_EXIT_IO_OUT, 4, Ucall.Port, 1, MmapSize - 2, 0));
        Assert.Equal(0u, io.Value);
        io = Assert.IsType<KvmExit.Io>(IoExit(KvmConst.KVM_EXIT_IO_OUT, 4, Ucall.Port, 1, ulong.MaxValue - 1, 0));
        Assert.Equal(0u, io.Value);
    }

    [Fact]
    public void Mmio_fail_entry_internal_error_and_system_event_carry_their_union_members()
    {
        var mmio = Decode(p =>
        {
            var run = (kvm_run*)p;
            run->exit_reason = (uint)KvmExitReason.KVM_EXIT_MMIO;
            run->mmio.phys_addr = 0x1_0000_0040;
            run->mmio.len = 4;
            run->mmio.is_write = 1;
        });
        Assert.Equal(new KvmExit.Mmio(0x1_0000_0040, 4, true), mmio);

        var fail = Decode(p =>
        {
            var run = (kvm_run*)p;
            run->exit_reason = (uint)KvmExitReason.KVM_EXIT_FAIL_ENTRY;
            run->fail_entry.hardware_entry_failure_reason = 0x80000021;
            run->fail_entry.cpu = 3;
        });
        Assert.Equal(new KvmExit.FailEntry(0x80000021, 3), fail);

        var internalError = Assert.IsType<KvmExit.InternalError>(Decode(p =>
        {
            var run = (kvm_run*)p;
            run->exit_reason = (uint)KvmExitReason.KVM_EXIT_INTERNAL_ERROR;
            run->@internal.suberror = 1;
            run->@internal.ndata = 40; // more than the 16 words the struct has: clamped
            for (int i = 0; i < 16; i++) run->@internal.data[i] = (ulong)i + 100;
        }));
        Assert.Equal(1u, internalError.Suberror);
        Assert.Equal(Enumerable.Range(100, 16).Select(i => (ulong)i), internalError.Data);
        Assert.StartsWith("KVM_INTERNAL_ERROR_EMULATION", internalError.SuberrorName);

        var ev = Decode(p =>
        {
            var run = (kvm_run*)p;
            run->exit_reason = (uint)KvmExitReason.KVM_EXIT_SYSTEM_EVENT;
            run->system_event.type = 2;
        });
        Assert.Equal(new KvmExit.SystemEvent(2), ev);
    }

    [Theory]
    [InlineData(KvmExitReason.KVM_EXIT_HLT, typeof(KvmExit.Hlt))]
    [InlineData(KvmExitReason.KVM_EXIT_INTR, typeof(KvmExit.Intr))]
    [InlineData(KvmExitReason.KVM_EXIT_SHUTDOWN, typeof(KvmExit.Shutdown))]
    [InlineData(KvmExitReason.KVM_EXIT_DIRTY_RING_FULL, typeof(KvmExit.DirtyRingFull))]
    [InlineData(KvmExitReason.KVM_EXIT_X86_RDMSR, typeof(KvmExit.Other))]
    public void Each_exit_reason_decodes_to_its_case(KvmExitReason reason, Type expected)
    {
        var exit = Decode(p => ((kvm_run*)p)->exit_reason = (uint)reason);
        Assert.IsType(expected, exit);
        Assert.Equal(reason, exit.Reason);
    }

    // ---- the ucall ABI ------------------------------------------------------------------------------------

    [Theory]
    [InlineData(Ucall.Done)]
    [InlineData(Ucall.Sync)]
    [InlineData(Ucall.Assert)]
    [InlineData(Ucall.Print)]
    [InlineData(Ucall.Yield)]
    public void Every_call_of_the_abi_decodes(uint call)
    {
        var io = (KvmExit.Io)IoExit(KvmConst.KVM_EXIT_IO_OUT, 4, Ucall.Port, 1, 0x200, call);
        Assert.True(Ucall.TryDecode(io, out var got, out var error), error);
        Assert.Equal(call, got);
    }

    [Fact]
    public void An_unknown_call_names_the_calls_there_are()
    {
        var io = (KvmExit.Io)IoExit(KvmConst.KVM_EXIT_IO_OUT, 4, Ucall.Port, 1, 0x200, 5);
        Assert.False(Ucall.TryDecode(io, out _, out var error));
        Assert.Equal("unknown ucall 5 (0 done, 1 sync (rsi = pass), 2 assert (rsi = message), 3 print (rsi = message), 4 yield)", error);
    }

    [Theory]
    [InlineData(KvmConst.KVM_EXIT_IO_OUT, 4, 0x3f8, 1, "port I/O out size 4 count 1 on port 0x3f8")]
    [InlineData(KvmConst.KVM_EXIT_IO_IN, 4, Ucall.Port, 1, "port I/O in size 4 count 1 on port 0x1000")]
    [InlineData(KvmConst.KVM_EXIT_IO_OUT, 2, Ucall.Port, 1, "port I/O out size 2 count 1 on port 0x1000")]
    [InlineData(KvmConst.KVM_EXIT_IO_OUT, 4, Ucall.Port, 3, "port I/O out size 4 count 3 on port 0x1000")]
    public void Port_io_that_is_not_a_ucall_is_refused_with_what_it_was(byte dir, byte size, ushort port, uint count, string what)
    {
        var io = (KvmExit.Io)IoExit(dir, size, port, count, 0x200, Ucall.Done);
        Assert.False(Ucall.TryDecode(io, out _, out var error));
        Assert.Equal(what + "; the guest ABI uses `out dx, eax` on port 0x1000", error);
    }

    [Fact]
    public void The_emitters_write_mov_eax_mov_edx_out_and_what_they_emit_decodes_back()
    {
        var code = KvmRig.Assemble(a => a.UcallYield());
        // B8 imm32 (mov eax), BA imm32 (mov edx), EF (out dx, eax): the sequence the workload compiler used by hand.
        Assert.Equal(new byte[] { 0xB8, 4, 0, 0, 0, 0xBA, 0x00, 0x10, 0, 0, 0xEF }, code);
        var text = Disassemble(KvmRig.Assemble(a => a.UcallPrint("hi")));
        Assert.Equal("lea rsi,[", text[0][..9]);
        Assert.Equal(["mov eax,3", "mov edx,1000h", "out dx,eax"], text[1..4]);
    }

    private static string[] Disassemble(byte[] code)
    {
        var decoder = Decoder.Create(64, new ByteArrayCodeReader(code));
        decoder.IP = SystemLayout.CodeGpa;
        var formatter = new IntelFormatter();
        formatter.Options.SpaceAfterOperandSeparator = false;
        var lines = new List<string>();
        while (decoder.IP < SystemLayout.CodeGpa + (ulong)code.Length)
        {
            var output = new StringOutput();
            formatter.Format(decoder.Decode(), output);
            lines.Add(output.ToStringAndReset());
        }
        return lines.ToArray();
    }

    // ---- gva windows --------------------------------------------------------------------------------------

    [Fact]
    public void Slots_below_64_TiB_are_identity_mapped_and_adjacent_slots_share_one_run()
    {
        var l = KvmGuestLayout.Plan(8ul << 20, [(1ul << 32, 2ul << 20), ((1ul << 32) + (2ul << 20), 4ul << 20), (1ul << 40, 1ul << 30)]);
        Assert.Equal([new(1ul << 32, (1ul << 32) + (6ul << 20), 0), new KvmGuestLayout.GvaRun(1ul << 40, (1ul << 40) + (1ul << 30), 0)], l.Runs);
        Assert.Equal(0x5000ul, l.GvaOf(0x5000)); // the system slot
        Assert.Equal((1ul << 32) + (5ul << 20), l.GvaOf((1ul << 32) + (5ul << 20)));
        Assert.Equal(4, l.Mappings.Count);
        Assert.Equal(new GuestMapping(0, 0, 8ul << 20), l.Mappings[0]);
    }

    [Fact]
    public void A_slot_at_the_top_of_a_52_bit_space_gets_a_window_from_64_TiB_keeping_its_offset_in_a_GiB()
    {
        ulong gpa = (1ul << 52) - (4ul << 20);
        var l = KvmGuestLayout.Plan(8ul << 20, [(gpa, 4ul << 20)]);
        var run = Assert.Single(l.Runs);
        Assert.Equal(KvmGuestLayout.IdentityLimit + (gpa & (KvmGuestLayout.WindowAlign - 1)), run.Gva);
        Assert.Equal(run.Gva + 8192, l.GvaOf(gpa + 8192));
        Assert.True(run.Gva + (4ul << 20) <= KvmGuestLayout.Canonical, "the window stays in the canonical lower half");
    }

    [Fact]
    public void A_gpa_in_no_slot_is_refused_with_the_address()
    {
        var l = KvmGuestLayout.Plan(8ul << 20, [(1ul << 32, 2ul << 20)]);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => l.GvaOf(1ul << 33));
        Assert.Contains("gpa 0x200000000 is in no memslot", e.Message);
    }

    [Fact]
    public void More_than_64_TiB_above_the_identity_limit_does_not_fit_4_level_paging()
    {
        var slots = Enumerable.Range(0, 65).Select(i => ((1ul << 47) + (ulong)i * (2ul << 40), 1ul << 40));
        var e = Assert.Throws<NotSupportedException>(() => KvmGuestLayout.Plan(8ul << 20, slots));
        Assert.Contains("64 TiB of guest-virtual windows", e.Message);
    }
}
