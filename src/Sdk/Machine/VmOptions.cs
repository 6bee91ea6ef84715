using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// What <see cref="Vm.Create(VmOptions)"/> builds. <see cref="Memory"/> is the size of the test slot (slot 1);
/// slot 0 is a small system slot at gpa 0 (the KVM backend keeps its code, stacks and page tables there).
/// </summary>
public sealed record VmOptions
{
    /// <summary>Options for a VM whose test slot has <paramref name="memory"/> bytes.</summary>
    public VmOptions(Size memory) => Memory = memory;

    /// <summary>Size of the test slot (memslot 1). A multiple of the backing's page size.</summary>
    public Size Memory { get; init; }

    /// <summary>Number of vCPUs (1 to <see cref="MaxVcpusDefault"/>).</summary>
    public int Vcpus { get; init; } = 1;

    /// <summary>What backs the test slot's memory.</summary>
    public Backing Backing { get; init; } = Backing.Anonymous;

    /// <summary>Which backend to use; Auto picks KVM when usable, else the simulator.</summary>
    public Backend Backend { get; init; } = Backend.Auto;

    /// <summary>Guest-physical address of the test slot; null = where the selftests put it (top of the guest-physical space, aligned down to the backing's page size).</summary>
    public ulong? TestSlotGpa { get; init; }

    /// <summary>Guest physical address width; null = the host CPU's (as the selftests do). Bounds every slot's end.</summary>
    public int? GuestPhysBits { get; init; }

    /// <summary>Size of system slot 0; null = the backend's default (<see cref="Vm.DefaultSystemMemory"/>).</summary>
    public Size? SystemMemory { get; init; }

    /// <summary>Start the test slot with <c>KVM_MEM_LOG_DIRTY_PAGES</c> set.</summary>
    public bool LogDirtyPages { get; init; }

    /// <summary><c>KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2</c> with <c>KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE</c>: GET does not re-protect, CLEAR does.</summary>
    public bool ManualProtect { get; init; }

    /// <summary><c>KVM_DIRTY_LOG_INITIALLY_SET</c> (needs <see cref="ManualProtect"/>): enabling logging sets every bit and protects nothing.</summary>
    public bool InitiallySet { get; init; }

    /// <summary>Dirty ring size per vCPU (<c>KVM_CAP_DIRTY_LOG_RING</c>), e.g. <c>64.KiB()</c>; 0 = no ring. A power of two, 4 KiB … 1 MiB (16-byte entries).</summary>
    public Size DirtyRingBytes { get; init; }

    /// <summary>Most vCPUs a VM may have (x86 KVM_MAX_VCPUS).</summary>
    public const int MaxVcpusDefault = 1024;              // x86 KVM_MAX_VCPUS
    /// <summary>sizeof(struct kvm_dirty_gfn).</summary>
    public const int DirtyRingEntryBytes = 16;            // sizeof(struct kvm_dirty_gfn)
    /// <summary>KVM_DIRTY_RING_MAX_ENTRIES.</summary>
    public const int DirtyRingMaxEntries = 65536;         // KVM_DIRTY_RING_MAX_ENTRIES
    /// <summary>KVM_DIRTY_RING_RSVD_ENTRIES: entries kept free for exits in flight.</summary>
    public const int DirtyRingReservedEntries = 64;       // KVM_DIRTY_RING_RSVD_ENTRIES

    /// <summary>Checks everything that does not depend on the backend; throws <see cref="ArgumentException"/> saying what is wrong and what is allowed.</summary>
    public void Validate()
    {
        CheckDefined(Backend, nameof(Backend));
        CheckDefined(Backing, nameof(Backing));
        var pageSize = Backing.PageSize();
        if (Memory.Bytes <= 0)
            throw new ArgumentOutOfRangeException(nameof(Memory),
                $"memory must be positive (got {Memory}); it is the size of the test slot, e.g. 1.GiB()");
        // Host RAM, checked once for the whole guest (test slot plus system slot) and before the page-size check,
        // so an absurd size is named as such rather than as misaligned.
        var ram = HostInfo.MemTotalBytes;
        var total = (Int128)Memory.Bytes + (SystemMemory?.Bytes ?? 0); // no wrap-around for sizes near long.MaxValue
        if (ram > 0 && total > ram)
            throw new ArgumentOutOfRangeException(SystemMemory is null || Memory.Bytes > ram ? nameof(Memory) : nameof(SystemMemory),
                SystemMemory is null
                    ? $"guest memory {Memory} is more than this host has ({new Size(ram)} of RAM, MemTotal in /proc/meminfo)"
                    : $"guest memory {Memory} plus system memory {SystemMemory} is {(total > long.MaxValue ? $"{total} bytes" : new Size((long)total).ToString())}, " +
                      $"more than this host has ({new Size(ram)} of RAM, MemTotal in /proc/meminfo)");
        if (Memory.Bytes % pageSize != 0)
            throw new ArgumentException(
                $"memory {Memory} ({Memory.Bytes} bytes) is not a multiple of the {Backing.Name()} backing's page size {new Size(pageSize)}; " +
                $"use {Suggest(Memory.Bytes, pageSize)}", nameof(Memory));
        if (Vcpus < 1 || Vcpus > MaxVcpusDefault)
            throw new ArgumentOutOfRangeException(nameof(Vcpus), $"vcpus must be 1 … {MaxVcpusDefault} (KVM_MAX_VCPUS on x86); got {Vcpus}");
        if (GuestPhysBits is { } bits && (bits < 32 || bits > 52))
            throw new ArgumentOutOfRangeException(nameof(GuestPhysBits), $"guest physical address bits must be 32 … 52; got {bits}");
        if (SystemMemory is { } sys && (sys.Bytes <= 0 || sys.Bytes % BackingInfo.Page4K != 0))
            throw new ArgumentException($"system memory {sys} must be a positive multiple of 4 KiB", nameof(SystemMemory));
        if (InitiallySet && !ManualProtect)
            throw new ArgumentException("InitiallySet (KVM_DIRTY_LOG_INITIALLY_SET) only exists with ManualProtect (KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE); set both", nameof(InitiallySet));
        if (DirtyRingBytes.Bytes is not 0 and var ring)
        {
            const int min = 4096, max = DirtyRingMaxEntries * DirtyRingEntryBytes;
            if (ring < 0 || (ring & (ring - 1)) != 0 || ring < min || ring > max)
                throw new ArgumentOutOfRangeException(nameof(DirtyRingBytes),
                    $"dirty ring size must be a power of two from {min} to {max} bytes (4 KiB … 1 MiB: {min / DirtyRingEntryBytes} … {DirtyRingMaxEntries} entries of 16 bytes); " +
                    $"got {ring} bytes{(ring >= 1024 ? $" ({DirtyRingBytes})" : "")}");
        }
        if (TestSlotGpa is { } gpa && gpa % (ulong)pageSize != 0)
            throw new ArgumentException($"test slot gpa 0x{gpa:x} is not aligned to the {Backing.Name()} backing's page size {new Size(pageSize)}", nameof(TestSlotGpa));
    }

    /// <summary>Refuses a value outside the enum (e.g. <c>(Backing)9</c>), naming the values allowed.</summary>
    internal static void CheckDefined<T>(T value, string name) where T : struct, Enum
    {
        if (!Enum.IsDefined(value))
            throw new ArgumentOutOfRangeException(name, value,
                $"{name} {Convert.ToInt64(value)} is not a {typeof(T).Name}; use one of {string.Join(", ", Enum.GetNames<T>())}");
    }

    /// <summary>The page-size multiples around <paramref name="bytes"/> (only those that exist: no overflow near long.MaxValue).</summary>
    static string Suggest(long bytes, long pageSize)
    {
        var down = AlignDown(bytes, pageSize);
        var up = bytes <= long.MaxValue - pageSize ? AlignUp(bytes, pageSize) : -1;
        return down == 0 ? new Size(up).ToString() : up < 0 ? new Size(down).ToString() : $"{new Size(down)} or {new Size(up)}";
    }

    internal static long AlignDown(long v, long a) => v / a * a;
    internal static long AlignUp(long v, long a) => (v + a - 1) / a * a;
}
