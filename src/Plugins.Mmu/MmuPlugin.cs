using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Plugins;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Mmu;

/// <summary>The Mmu plugin: its global is <see cref="MmuApi"/>.</summary>
public sealed class MmuPlugin : VirtLabPlugin<MmuApi>
{
    public override string GlobalName => "Mmu";
    public override string Description => "KVM page tables and dirty logging: kvm_page_table_test, dirty_log_perf_test, dirty tracking, TDP MMU and stage-2 models";
    protected override MmuApi Create(PluginContext context) => new();
}

/// <summary>
/// The <c>Mmu</c> global. Real KVM (or the simulator): <see cref="PageTableTest(PageTableTestOptions)"/> (seed 000),
/// <see cref="DirtyLogPerf(DirtyLogPerfOptions)"/> (dirty_log_perf_test), <see cref="Track"/>. Models:
/// <see cref="Model(Vm, DirtyTracking, SplitPolicy)"/> (x86 TDP MMU, seed 001) and <see cref="Stage2"/> (ARM stage 2, seed 000's TLB conflict).
/// </summary>
public sealed class MmuApi
{
    /// <summary>Where the tests write their selftest-style lines as they go (null = silent; the result keeps them in <c>Lines</c>).</summary>
    public TextWriter? Log { get; set; } = Console.Out;

    /// <summary>kvm_page_table_test with its options: <c>-b</c> <paramref name="memory"/>, <c>-s</c> <paramref name="backing"/>,
    /// <c>-v</c> <paramref name="vcpus"/>, <c>-p</c> <paramref name="physOffset"/>, <c>-m</c> <paramref name="guestPhysBits"/>.</summary>
    public PageTableTestResult PageTableTest(Size? memory = null, Backing backing = Backing.Anonymous, int vcpus = 1, ulong? physOffset = null,
        int? guestPhysBits = null, Backend backend = Backend.Auto, CancellationToken cancellation = default)
        => PageTableTest(new PageTableTestOptions
        {
            Memory = memory ?? new Size(1L << 30), Backing = backing, Vcpus = vcpus, PhysOffset = physOffset, GuestPhysBits = guestPhysBits, Backend = backend,
        }, cancellation);

    public PageTableTestResult PageTableTest(PageTableTestOptions options, CancellationToken cancellation = default)
        => PageTableTestRunner.Run(options, Log, cancellation);

    /// <summary>The three stages on an existing VM's test slot (logging must be off).</summary>
    public PageTableTestResult PageTableTest(Vm vm, CancellationToken cancellation = default) => PageTableTestRunner.Run(vm, Log, cancellation);

    /// <summary>dirty_log_perf_test with its options (<c>-v -b -i -w -a -r -x -s -o</c>, and the collection mode).</summary>
    public DirtyLogPerfResult DirtyLogPerf(int vcpus = 1, Size? memoryPerVcpu = null, int iterations = 2, int writePercent = 100,
        bool randomAccess = false, uint seed = 1, int memslots = 1, Backing backing = Backing.Anonymous, bool overlap = false,
        DirtyLogMode mode = DirtyLogMode.ManualProtect, Size? clearChunk = null, long ringBytes = 64 * 1024, Backend backend = Backend.Auto,
        CancellationToken cancellation = default)
        => DirtyLogPerf(new DirtyLogPerfOptions
        {
            Vcpus = vcpus, MemoryPerVcpu = memoryPerVcpu ?? new Size(1L << 30), Iterations = iterations, WritePercent = writePercent,
            RandomAccess = randomAccess, Seed = seed, Memslots = memslots, Backing = backing, Overlap = overlap, Mode = mode,
            ClearChunk = clearChunk, RingBytes = ringBytes, Backend = backend,
        }, cancellation);

    public DirtyLogPerfResult DirtyLogPerf(DirtyLogPerfOptions options, CancellationToken cancellation = default)
        => DirtyLogPerfRunner.Run(options, Log, cancellation);

    /// <summary>Dirty tracking on <paramref name="vm"/>'s test slots (or the given ones) in the VM's own mode; <c>Collect()</c> returns what was dirtied since.</summary>
    public DirtyTracker Track(Vm vm, params int[] slots) => new(vm, slots.Length == 0 ? null : slots);

    /// <summary>A TDP MMU model of <paramref name="vm"/>'s memslots and dirty-log mode.</summary>
    public TdpMmu Model(Vm vm, DirtyTracking tracking = DirtyTracking.WriteProtect, SplitPolicy split = SplitPolicy.Eager)
        => TdpMmu.For(vm, tracking, split);

    /// <summary>A TDP MMU model with no VM behind it; add memslots with <c>AddSlot</c>.</summary>
    public TdpMmu Model(TdpMmuOptions? options = null) => new(options);

    /// <summary>An ARM stage-2 model of one block-backed memslot, coalescing under <paramref name="policy"/>.</summary>
    public Stage2Mmu Stage2(Size size, CoalescePolicy policy, ulong ipa = 0x4000_0000, Size? blockSize = null) => new(ipa, size, policy, blockSize);

    public override string ToString() =>
        "Mmu: PageTableTest(...), DirtyLogPerf(...), Track(vm), Model(vm, tracking, split), Stage2(size, policy)";
}
