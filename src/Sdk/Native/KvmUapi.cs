using System.Runtime.InteropServices;

namespace VirtLab.Sdk.Native;

// KVM userspace API (include/uapi/linux/kvm.h, arch/x86/include/uapi/asm/kvm.h), x86-64.
// Struct layouts are explicit and their sizes asserted by tests against the header's sizeof().

/// <summary>Linux asm-generic/ioctl.h request encoding: dir(2) | size(14) | type(8) | nr(8).</summary>
internal static class IoctlEncoding
{
    private const int NrShift = 0, TypeShift = 8, SizeShift = 16, DirShift = 30;
    private const uint None = 0, Write = 1, Read = 2;

    private static nuint Ioc(uint dir, uint type, uint nr, uint size)
    {
        if (size >= (1u << 14)) throw new ArgumentOutOfRangeException(nameof(size), "ioctl size field is 14 bits");
        return (nuint)((dir << DirShift) | (size << SizeShift) | (type << TypeShift) | (nr << NrShift));
    }

    public static nuint IO(uint type, uint nr) => Ioc(None, type, nr, 0);
    public static nuint IOR(uint type, uint nr, uint size) => Ioc(Read, type, nr, size);
    public static nuint IOW(uint type, uint nr, uint size) => Ioc(Write, type, nr, size);
    public static nuint IOWR(uint type, uint nr, uint size) => Ioc(Read | Write, type, nr, size);
}

/// <summary>KVM ioctl request numbers, computed from the header's _IO/_IOR/_IOW/_IOWR definitions.</summary>
internal static unsafe class KvmIoctl
{
    public const uint KVMIO = 0xAE;

    // System ioctls (/dev/kvm).
    public static readonly nuint KVM_GET_API_VERSION = IoctlEncoding.IO(KVMIO, 0x00);
    public static readonly nuint KVM_CREATE_VM = IoctlEncoding.IO(KVMIO, 0x01);
    public static readonly nuint KVM_CHECK_EXTENSION = IoctlEncoding.IO(KVMIO, 0x03);
    public static readonly nuint KVM_GET_VCPU_MMAP_SIZE = IoctlEncoding.IO(KVMIO, 0x04);
    public static readonly nuint KVM_GET_SUPPORTED_CPUID = IoctlEncoding.IOWR(KVMIO, 0x05, (uint)sizeof(kvm_cpuid2));

    // VM ioctls.
    public static readonly nuint KVM_CREATE_VCPU = IoctlEncoding.IO(KVMIO, 0x41);
    public static readonly nuint KVM_GET_DIRTY_LOG = IoctlEncoding.IOW(KVMIO, 0x42, (uint)sizeof(kvm_dirty_log));
    public static readonly nuint KVM_SET_USER_MEMORY_REGION = IoctlEncoding.IOW(KVMIO, 0x46, (uint)sizeof(kvm_userspace_memory_region));
    public static readonly nuint KVM_ENABLE_CAP = IoctlEncoding.IOW(KVMIO, 0xa3, (uint)sizeof(kvm_enable_cap));
    public static readonly nuint KVM_CLEAR_DIRTY_LOG = IoctlEncoding.IOWR(KVMIO, 0xc0, (uint)sizeof(kvm_clear_dirty_log));
    public static readonly nuint KVM_RESET_DIRTY_RINGS = IoctlEncoding.IO(KVMIO, 0xc7);
    public static readonly nuint KVM_GET_STATS_FD = IoctlEncoding.IO(KVMIO, 0xce);

    // vCPU ioctls.
    public static readonly nuint KVM_RUN = IoctlEncoding.IO(KVMIO, 0x80);
    public static readonly nuint KVM_GET_REGS = IoctlEncoding.IOR(KVMIO, 0x81, (uint)sizeof(kvm_regs));
    public static readonly nuint KVM_SET_REGS = IoctlEncoding.IOW(KVMIO, 0x82, (uint)sizeof(kvm_regs));
    public static readonly nuint KVM_GET_SREGS = IoctlEncoding.IOR(KVMIO, 0x83, (uint)sizeof(kvm_sregs));
    public static readonly nuint KVM_SET_SREGS = IoctlEncoding.IOW(KVMIO, 0x84, (uint)sizeof(kvm_sregs));
    public static readonly nuint KVM_SET_CPUID2 = IoctlEncoding.IOW(KVMIO, 0x90, (uint)sizeof(kvm_cpuid2));

    /// <summary>Name of a request, for error messages.</summary>
    public static string Name(nuint request)
    {
        foreach (var f in typeof(KvmIoctl).GetFields())
            if (f.FieldType == typeof(nuint) && (nuint)f.GetValue(null)! == request) return f.Name;
        return $"ioctl 0x{request:x}";
    }
}

/// <summary>KVM_CAP_* numbers this project asks about.</summary>
public static class KvmCap
{
#pragma warning disable CS1591 // the kernel's names (<linux/kvm.h>, Documentation/virt/kvm/api.rst)
    public const int USER_MEMORY = 3;
    public const int SET_TSS_ADDR = 4;
    public const int EXT_CPUID = 7;
    public const int NR_VCPUS = 9;
    public const int NR_MEMSLOTS = 10;
    public const int SYNC_MMU = 16;
    public const int MAX_VCPUS = 66;
    public const int READONLY_MEM = 81;
    public const int MULTI_ADDRESS_SPACE = 118;
    public const int MAX_VCPU_ID = 128;
    public const int IMMEDIATE_EXIT = 136;
    public const int X86_DISABLE_EXITS = 143;
    public const int MANUAL_DIRTY_LOG_PROTECT2 = 168;
    public const int HALT_POLL = 182;
    public const int DIRTY_LOG_RING = 192;
    public const int BINARY_STATS_FD = 203;
    public const int DIRTY_LOG_RING_ACQ_REL = 223;
    public const int DIRTY_LOG_RING_WITH_BITMAP = 225;

    public static string Name(int cap) => cap switch
    {
        USER_MEMORY => "KVM_CAP_USER_MEMORY", SET_TSS_ADDR => "KVM_CAP_SET_TSS_ADDR", EXT_CPUID => "KVM_CAP_EXT_CPUID",
        NR_VCPUS => "KVM_CAP_NR_VCPUS", NR_MEMSLOTS => "KVM_CAP_NR_MEMSLOTS", SYNC_MMU => "KVM_CAP_SYNC_MMU",
        MAX_VCPUS => "KVM_CAP_MAX_VCPUS", READONLY_MEM => "KVM_CAP_READONLY_MEM",
        MULTI_ADDRESS_SPACE => "KVM_CAP_MULTI_ADDRESS_SPACE", MAX_VCPU_ID => "KVM_CAP_MAX_VCPU_ID",
        IMMEDIATE_EXIT => "KVM_CAP_IMMEDIATE_EXIT", X86_DISABLE_EXITS => "KVM_CAP_X86_DISABLE_EXITS",
        MANUAL_DIRTY_LOG_PROTECT2 => "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", HALT_POLL => "KVM_CAP_HALT_POLL",
        DIRTY_LOG_RING => "KVM_CAP_DIRTY_LOG_RING", BINARY_STATS_FD => "KVM_CAP_BINARY_STATS_FD",
        DIRTY_LOG_RING_ACQ_REL => "KVM_CAP_DIRTY_LOG_RING_ACQ_REL",
        DIRTY_LOG_RING_WITH_BITMAP => "KVM_CAP_DIRTY_LOG_RING_WITH_BITMAP",
        _ => $"KVM_CAP_{cap}",
    };
#pragma warning restore CS1591
}

internal static class KvmConst
{
    public const int KVM_API_VERSION = 12;
    public const uint KVM_MEM_LOG_DIRTY_PAGES = 1u << 0;
    public const uint KVM_MEM_READONLY = 1u << 1;
    public const ulong KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE = 1ul << 0;
    public const ulong KVM_DIRTY_LOG_INITIALLY_SET = 1ul << 1;
    public const uint KVM_DIRTY_GFN_F_DIRTY = 1u << 0;
    public const uint KVM_DIRTY_GFN_F_RESET = 1u << 1;
    /// <summary>x86: the dirty ring is mapped at this page offset of the vCPU fd.</summary>
    public const long KVM_DIRTY_LOG_PAGE_OFFSET = 64;
    public const byte KVM_EXIT_IO_IN = 0, KVM_EXIT_IO_OUT = 1;
}

/// <summary>kvm_run.exit_reason values (KVM_EXIT_*).</summary>
public enum KvmExitReason : uint
{
#pragma warning disable CS1591 // the kernel's names (<linux/kvm.h>, Documentation/virt/kvm/api.rst)
    KVM_EXIT_UNKNOWN = 0, KVM_EXIT_EXCEPTION = 1, KVM_EXIT_IO = 2, KVM_EXIT_HYPERCALL = 3, KVM_EXIT_DEBUG = 4,
    KVM_EXIT_HLT = 5, KVM_EXIT_MMIO = 6, KVM_EXIT_IRQ_WINDOW_OPEN = 7, KVM_EXIT_SHUTDOWN = 8,
    KVM_EXIT_FAIL_ENTRY = 9, KVM_EXIT_INTR = 10, KVM_EXIT_SET_TPR = 11, KVM_EXIT_TPR_ACCESS = 12,
    KVM_EXIT_S390_SIEIC = 13, KVM_EXIT_S390_RESET = 14, KVM_EXIT_DCR = 15, KVM_EXIT_NMI = 16,
    KVM_EXIT_INTERNAL_ERROR = 17, KVM_EXIT_OSI = 18, KVM_EXIT_PAPR_HCALL = 19, KVM_EXIT_S390_UCONTROL = 20,
    KVM_EXIT_WATCHDOG = 21, KVM_EXIT_S390_TSCH = 22, KVM_EXIT_EPR = 23, KVM_EXIT_SYSTEM_EVENT = 24,
    KVM_EXIT_S390_STSI = 25, KVM_EXIT_IOAPIC_EOI = 26, KVM_EXIT_HYPERV = 27, KVM_EXIT_ARM_NISV = 28,
    KVM_EXIT_X86_RDMSR = 29, KVM_EXIT_X86_WRMSR = 30, KVM_EXIT_DIRTY_RING_FULL = 31,
    KVM_EXIT_AP_RESET_HOLD = 32, KVM_EXIT_X86_BUS_LOCK = 33, KVM_EXIT_XEN = 34, KVM_EXIT_RISCV_SBI = 35,
    KVM_EXIT_RISCV_CSR = 36, KVM_EXIT_NOTIFY = 37, KVM_EXIT_LOONGARCH_IOCSR = 38, KVM_EXIT_MEMORY_FAULT = 39,
#pragma warning restore CS1591
}

[StructLayout(LayoutKind.Sequential)]
internal struct kvm_userspace_memory_region
{
    public uint slot;
    public uint flags;
    public ulong guest_phys_addr;
    public ulong memory_size;
    public ulong userspace_addr;
}

[StructLayout(LayoutKind.Sequential)]
internal struct kvm_dirty_log
{
    public uint slot;
    public uint padding1;
    public ulong dirty_bitmap; // user pointer
}

[StructLayout(LayoutKind.Sequential)]
internal struct kvm_clear_dirty_log
{
    public uint slot;
    public uint num_pages;
    public ulong first_page;
    public ulong dirty_bitmap; // user pointer
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct kvm_enable_cap
{
    public uint cap;
    public uint flags;
    public fixed ulong args[4];
    public fixed byte pad[64];
}

[StructLayout(LayoutKind.Sequential)]
internal struct kvm_regs
{
    public ulong rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    public ulong r8, r9, r10, r11, r12, r13, r14, r15;
    public ulong rip, rflags;
}

[StructLayout(LayoutKind.Sequential)]
internal struct kvm_segment
{
    public ulong @base;
    public uint limit;
    public ushort selector;
    public byte type, present, dpl, db, s, l, g, avl;
    public byte unusable, padding;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct kvm_dtable
{
    public ulong @base;
    public ushort limit;
    public fixed ushort padding[3];
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct kvm_sregs
{
    public kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    public kvm_dtable gdt, idt;
    public ulong cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    public fixed ulong interrupt_bitmap[4]; // (KVM_NR_INTERRUPTS + 63) / 64
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct kvm_cpuid_entry2
{
    public uint function, index, flags, eax, ebx, ecx, edx;
    public fixed uint padding[3];
}

/// <summary>Header only; entries follow in the same allocation.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct kvm_cpuid2
{
    public uint nent;
    public uint padding;
}

[StructLayout(LayoutKind.Sequential)]
internal struct kvm_dirty_gfn
{
    public uint flags;
    public uint slot; // as_id << 16 | slot id
    public ulong offset; // page index inside the slot
}

[StructLayout(LayoutKind.Sequential)]
internal struct kvm_stats_header
{
    public uint flags, name_size, num_desc, id_offset, desc_offset, data_offset;
}

/// <summary>Fixed part of kvm_stats_desc; name[name_size] follows.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct kvm_stats_desc
{
    public uint flags;
    public short exponent;
    public ushort size;
    public uint offset;
    public uint bucket_size;
}

/// <summary>
/// <c>struct kvm_run</c>, the vCPU's shared page (mmap of the vCPU fd): the header, the exit union (256 bytes, one
/// struct per exit reason, all at offset 32) and the sync-regs area. Only the members VirtLab reads are declared; the
/// offsets and the size are those of &lt;linux/kvm.h&gt; on x86-64 (checked by a test).
/// </summary>
[StructLayout(LayoutKind.Explicit, Size = 2352)]
internal struct kvm_run
{
    [FieldOffset(0)] public byte request_interrupt_window;
    [FieldOffset(1)] public byte immediate_exit;
    [FieldOffset(8)] public uint exit_reason;
    [FieldOffset(12)] public byte ready_for_interrupt_injection;
    [FieldOffset(13)] public byte if_flag;
    [FieldOffset(14)] public ushort flags;
    [FieldOffset(16)] public ulong cr8;
    [FieldOffset(24)] public ulong apic_base;
    [FieldOffset(32)] public kvm_run_io io;
    [FieldOffset(32)] public kvm_run_mmio mmio;
    [FieldOffset(32)] public kvm_run_fail_entry fail_entry;
    [FieldOffset(32)] public kvm_run_internal @internal;
    [FieldOffset(32)] public kvm_run_system_event system_event;
    [FieldOffset(288)] public ulong kvm_valid_regs;
    [FieldOffset(296)] public ulong kvm_dirty_regs;
}

/// <summary>run-&gt;io (KVM_EXIT_IO): the data is at <c>(byte*)run + data_offset</c>.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct kvm_run_io
{
    public byte direction, size;
    public ushort port;
    public uint count;
    public ulong data_offset;
}

/// <summary>run-&gt;mmio (KVM_EXIT_MMIO).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct kvm_run_mmio
{
    public ulong phys_addr;
    public fixed byte data[8];
    public uint len;
    public byte is_write;
}

/// <summary>run-&gt;fail_entry (KVM_EXIT_FAIL_ENTRY).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct kvm_run_fail_entry
{
    public ulong hardware_entry_failure_reason;
    public uint cpu;
}

/// <summary>run-&gt;internal (KVM_EXIT_INTERNAL_ERROR).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct kvm_run_internal
{
    public uint suberror;
    public uint ndata;
    public fixed ulong data[16];
}

/// <summary>run-&gt;system_event (KVM_EXIT_SYSTEM_EVENT).</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct kvm_run_system_event
{
    public uint type;
    public uint ndata;
}
