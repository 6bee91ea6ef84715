using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// Why <c>KVM_RUN</c> returned, decoded once from <c>struct kvm_run</c> (like rust-vmm's <c>VcpuExit</c>): one case per
/// exit reason the VirtLab guest ABI meets, with that reason's members copied out of the shared page, so the
/// dispatcher switches on a type instead of reading the union. Data-less exits are shared instances.
/// </summary>
internal abstract record KvmExit(KvmExitReason Reason)
{
    /// <summary>KVM_EXIT_IO. <paramref name="Value"/> is the first element (<paramref name="Size"/> bytes, little-endian)
    /// of an OUT; string I/O (count &gt; 1) and IN are not decoded further, the ABI never uses them.</summary>
    public sealed record Io(bool Out, byte Size, ushort Port, uint Count, uint Value) : KvmExit(KvmExitReason.KVM_EXIT_IO);

    /// <summary>KVM_EXIT_MMIO: an access to a gpa no memslot backs.</summary>
    public sealed record Mmio(ulong PhysAddr, uint Length, bool IsWrite) : KvmExit(KvmExitReason.KVM_EXIT_MMIO);

    /// <summary>KVM_EXIT_HLT (no in-kernel irqchip, so HLT comes to userspace).</summary>
    public sealed record Hlt() : KvmExit(KvmExitReason.KVM_EXIT_HLT);

    /// <summary>KVM_EXIT_INTR: a signal was pending (the kick).</summary>
    public sealed record Intr() : KvmExit(KvmExitReason.KVM_EXIT_INTR);

    /// <summary>KVM_RUN returned -EINTR or -EAGAIN (a kick or immediate_exit) before or instead of an exit.</summary>
    public sealed record Interrupted() : KvmExit(KvmExitReason.KVM_EXIT_INTR);

    /// <summary>KVM_EXIT_SHUTDOWN: a triple fault.</summary>
    public sealed record Shutdown() : KvmExit(KvmExitReason.KVM_EXIT_SHUTDOWN);

    /// <summary>KVM_EXIT_DIRTY_RING_FULL: harvest and reset before the next KVM_RUN.</summary>
    public sealed record DirtyRingFull() : KvmExit(KvmExitReason.KVM_EXIT_DIRTY_RING_FULL);

    /// <summary>KVM_EXIT_FAIL_ENTRY: VM entry failed (hardware_entry_failure_reason, cpu).</summary>
    public sealed record FailEntry(ulong HardwareReason, uint Cpu) : KvmExit(KvmExitReason.KVM_EXIT_FAIL_ENTRY);

    /// <summary>KVM_EXIT_INTERNAL_ERROR with its suberror and up to 16 data words.</summary>
    public sealed record InternalError(uint Suberror, ulong[] Data) : KvmExit(KvmExitReason.KVM_EXIT_INTERNAL_ERROR)
    {
        public string SuberrorName => Suberror switch
        {
            1 => "KVM_INTERNAL_ERROR_EMULATION (instruction emulation failed)",
            2 => "KVM_INTERNAL_ERROR_SIMUL_EX (exception while delivering an exception)",
            3 => "KVM_INTERNAL_ERROR_DELIVERY_EV (exit while delivering an event)",
            4 => "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
            _ => $"suberror {Suberror}",
        };
    }

    /// <summary>KVM_EXIT_SYSTEM_EVENT (shutdown, reset, crash, …: the type).</summary>
    public sealed record SystemEvent(uint Type) : KvmExit(KvmExitReason.KVM_EXIT_SYSTEM_EVENT);

    /// <summary>Any other exit reason: the guest ABI does not expect it.</summary>
    public sealed record Other(KvmExitReason Code) : KvmExit(Code);

    private static readonly Hlt HltExit = new();
    private static readonly Intr IntrExit = new();
    private static readonly Shutdown ShutdownExit = new();
    private static readonly DirtyRingFull RingFullExit = new();

    /// <summary>The shared instance for KVM_RUN's -EINTR/-EAGAIN.</summary>
    public static readonly Interrupted Kicked = new();

    /// <summary>
    /// Decode the exit KVM left in <paramref name="run"/>, a mapping of <paramref name="mappedBytes"/> bytes (the vCPU
    /// mmap size): an I/O exit's data lies at <c>data_offset</c> inside that mapping, which is checked rather than trusted.
    /// </summary>
    public static unsafe KvmExit Decode(kvm_run* run, int mappedBytes)
    {
        var reason = (KvmExitReason)run->exit_reason;
        switch (reason)
        {
            case KvmExitReason.KVM_EXIT_IO:
            {
                var io = run->io;
                uint value = 0;
                int size = Math.Min((int)io.size, 4);
                // Safe because the read [data_offset, data_offset + size) is checked to lie inside the vCPU mapping.
                if (io.direction == KvmConst.KVM_EXIT_IO_OUT && size > 0 && io.data_offset <= (ulong)(mappedBytes - size))
                    for (int i = 0; i < size; i++) value |= (uint)((byte*)run)[io.data_offset + (ulong)i] << (8 * i);
                return new Io(io.direction == KvmConst.KVM_EXIT_IO_OUT, io.size, io.port, io.count, value);
            }
            case KvmExitReason.KVM_EXIT_MMIO:
                return new Mmio(run->mmio.phys_addr, run->mmio.len, run->mmio.is_write != 0);
            case KvmExitReason.KVM_EXIT_HLT: return HltExit;
            case KvmExitReason.KVM_EXIT_INTR: return IntrExit;
            case KvmExitReason.KVM_EXIT_SHUTDOWN: return ShutdownExit;
            case KvmExitReason.KVM_EXIT_DIRTY_RING_FULL: return RingFullExit;
            case KvmExitReason.KVM_EXIT_FAIL_ENTRY:
                return new FailEntry(run->fail_entry.hardware_entry_failure_reason, run->fail_entry.cpu);
            case KvmExitReason.KVM_EXIT_INTERNAL_ERROR:
            {
                int n = (int)Math.Min(run->@internal.ndata, 16u);
                var data = new ulong[n];
                for (int i = 0; i < n; i++) data[i] = run->@internal.data[i];
                return new InternalError(run->@internal.suberror, data);
            }
            case KvmExitReason.KVM_EXIT_SYSTEM_EVENT:
                return new SystemEvent(run->system_event.type);
            default:
                return new Other(reason);
        }
    }
}
