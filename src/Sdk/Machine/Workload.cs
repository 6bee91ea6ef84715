using System.Collections.Immutable;

namespace VirtLab.Sdk.Machine;

/// <summary>In which order a vCPU visits the strides of its share of the range in each pass.</summary>
public enum AccessOrder
{
    /// <summary>Stride 0, 1, 2, …</summary>
    Sequential,
    /// <summary>As many draws as strides, each a random stride (with replacement) — dirty_log_perf_test <c>-a</c>.</summary>
    Random,
    /// <summary>Every stride exactly once, in a random order (a full-period LCG over the next power of two, skipping indexes past the end).</summary>
    Shuffled,
}

/// <summary>How the range is shared among vCPUs.</summary>
public enum VcpuSharing
{
    /// <summary>Each vCPU gets its own contiguous share of the strides (vCPU i: strides [i·S/V, (i+1)·S/V)).</summary>
    Partition,
    /// <summary>Every vCPU walks the whole range (dirty_log_perf_test <c>-o</c>, kvm_page_table_test).</summary>
    Overlap,
}

/// <summary>Which vCPUs write.</summary>
public enum VcpuRoles
{
    /// <summary>Every vCPU decides each access by <see cref="Workload.WritePercent"/>.</summary>
    WritePercent,
    /// <summary>Even vCPU ids write, odd ids read (kvm_page_table_test: <c>vcpu_write = !(vcpu_id % 2)</c>).</summary>
    EvenWriteOddRead,
}

/// <summary>The role a given vCPU plays.</summary>
public enum VcpuRole
{
    /// <summary>Reads and writes by the workload's write percentage.</summary>
    Mixed,
    /// <summary>Only writes.</summary>
    Writer,
    /// <summary>Only reads.</summary>
    Reader,
}

/// <summary>Access kind of one <see cref="StrideAccess"/>.</summary>
public enum AccessOp
{
    /// <summary>Decided by the vCPU's role / the write percentage.</summary>
    Auto,
    /// <summary>A load.</summary>
    Read,
    /// <summary>A store.</summary>
    Write,
}

/// <summary>
/// Accesses made inside each stride: <see cref="Count"/> 8-byte accesses at
/// <c>stride base + Workload.Offset + Offset + j·Step</c>.
/// </summary>
public readonly record struct StrideAccess(long Offset = 0, int Count = 1, long Step = 4096, AccessOp Op = AccessOp.Auto)
{
    /// <summary><paramref name="count"/> loads, <paramref name="step"/> bytes apart, from <paramref name="offset"/> within the stride.</summary>
    public static StrideAccess Read(long offset = 0, int count = 1, long step = 4096) => new(offset, count, step, AccessOp.Read);
    /// <summary><paramref name="count"/> stores, <paramref name="step"/> bytes apart, from <paramref name="offset"/> within the stride.</summary>
    public static StrideAccess Write(long offset = 0, int count = 1, long step = 4096) => new(offset, count, step, AccessOp.Write);
}

/// <summary>The three stages of kvm_page_table_test (seed 000).</summary>
public enum PageTableStage
{
    /// <summary>KVM_CREATE_MAPPINGS: every vCPU touches the first 8 bytes of each backing page; even vCPUs write, odd read.</summary>
    CreateMappings,
    /// <summary>KVM_UPDATE_MAPPINGS (logging on): anonymous — write every 4 KiB page; huge backings — write the first 4 KiB page of each huge page, then read its upper half page by page.</summary>
    UpdateMappings,
    /// <summary>KVM_ADJUST_MAPPINGS (logging off): every vCPU reads every 4 KiB page.</summary>
    AdjustMappings,
}

/// <summary>
/// Declarative guest work, run by <see cref="Vm.Run"/> on either backend. The range is divided into whole strides of
/// <see cref="Stride"/> bytes (a partial stride at its end is not visited); in each stride a vCPU makes the <see cref="Accesses"/> (by default one 8-byte access at
/// <see cref="Offset"/>). Reads load 8 bytes; writes store <see cref="WriteValue"/>.
/// Randomness (order, write mix) comes from one Park–Miller generator per vCPU seeded with <c>Seed + vcpu</c>
/// (the selftests' <c>guest_random_u32</c>), kept across passes; see <see cref="WorkloadCursor"/> for the exact rules.
/// </summary>
public sealed record Workload
{
    /// <summary>Slot whose memory is the range, when <see cref="Gpa"/> is null. Default: the test slot (1).</summary>
    public int Slot { get; init; } = 1;

    /// <summary>Start of an explicit gpa range (may span adjacent slots); null = <see cref="Slot"/>'s start.</summary>
    public ulong? Gpa { get; init; }

    /// <summary>Bytes of the range; null = to the end of the slot containing the start.</summary>
    public long? Length { get; init; }

    /// <summary>Bytes between two accesses of one vCPU (4096: each page).</summary>
    public long Stride { get; init; } = 4096;

    /// <summary>Offset added to every access inside a stride.</summary>
    public long Offset { get; init; }

    /// <summary>Accesses per stride; empty means one <see cref="AccessOp.Auto"/> access at offset 0.</summary>
    public ImmutableArray<StrideAccess> Accesses { get; init; } = [];

    /// <summary>Percentage of <see cref="AccessOp.Auto"/> accesses that write, for <see cref="VcpuRoles.WritePercent"/>.</summary>
    public int WritePercent { get; init; } = 100;

    /// <summary>Seed of the random order and roles (same seed, same accesses).</summary>
    public uint Seed { get; init; } = 1;

    /// <summary>Sequential or random order of the strides.</summary>
    public AccessOrder Order { get; init; } = AccessOrder.Sequential;

    /// <summary>How the vCPUs share the slot (each its own part, or all of it).</summary>
    public VcpuSharing Sharing { get; init; } = VcpuSharing.Partition;

    /// <summary>How a vCPU decides between reading and writing.</summary>
    public VcpuRoles Roles { get; init; } = VcpuRoles.WritePercent;

    /// <summary>Passes over the slot.</summary>
    public int Passes { get; init; } = 1;

    /// <summary>The most passes one run takes: per-vCPU pass times are kept for the result (8 MB per vCPU at the limit).</summary>
    public const int MaxPasses = 1_000_000;

    /// <summary>All vCPUs stop at a sync point after each pass (the host's after-pass callback runs there); false = passes run back to back.</summary>
    public bool SyncEachPass { get; init; } = true;

    /// <summary>The 64-bit value each write stores.</summary>
    public ulong WriteValue { get; init; } = 0x0123456789ABCDEF;

    /// <summary>Label shown in results (e.g. KVM_CREATE_MAPPINGS).</summary>
    public string? Name { get; init; }

    /// <summary>The accesses actually made per stride.</summary>
    public ImmutableArray<StrideAccess> EffectiveAccesses => Accesses.IsDefaultOrEmpty ? [new StrideAccess(Offset: 0)] : Accesses;

    // ---- factories ------------------------------------------------------------------------------

    /// <summary>Write 8 bytes at <paramref name="offset"/> of every <paramref name="stride"/> of slot <paramref name="slot"/>, each vCPU its own share.</summary>
    public static Workload Write(int slot = 1, long stride = 4096, long offset = 0, int passes = 1)
        => new() { Slot = slot, Stride = stride, Offset = offset, Passes = passes, WritePercent = 100, Name = "write" };

    /// <summary>Read 8 bytes at <paramref name="offset"/> of every <paramref name="stride"/> of slot <paramref name="slot"/>.</summary>
    public static Workload Read(int slot = 1, long stride = 4096, long offset = 0, int passes = 1)
        => new() { Slot = slot, Stride = stride, Offset = offset, Passes = passes, WritePercent = 0, Name = "read" };

    /// <summary>The same work over the gpa range [<paramref name="gpa"/>, +<paramref name="length"/>).</summary>
    public Workload In(ulong gpa, long length) => this with { Gpa = gpa, Length = length };

    /// <summary>
    /// dirty_log_perf_test's guest: each vCPU walks its share (or, with <paramref name="overlap"/>, the whole range) page by
    /// page, writing with probability <paramref name="writePercent"/>%, <paramref name="iterations"/> passes with a sync after each.
    /// </summary>
    public static Workload DirtyLogPerf(int writePercent = 100, bool randomAccess = false, uint seed = 1, bool overlap = false,
        int iterations = 2, int slot = 1, long pageSize = 4096)
        => new()
        {
            Slot = slot, Stride = pageSize, WritePercent = writePercent, Seed = seed,
            Order = randomAccess ? AccessOrder.Random : AccessOrder.Sequential,
            Sharing = overlap ? VcpuSharing.Overlap : VcpuSharing.Partition,
            Passes = iterations, SyncEachPass = true, Name = "dirty memory",
        };

    /// <summary>dirty_log_perf_test's populate pass (iteration 0): every vCPU writes every page of its share once.</summary>
    public static Workload DirtyLogPerfPopulate(bool overlap = false, int slot = 1, long pageSize = 4096)
        => new() { Slot = slot, Stride = pageSize, WritePercent = 100, Sharing = overlap ? VcpuSharing.Overlap : VcpuSharing.Partition, Name = "populate memory" };

    /// <summary>One stage of kvm_page_table_test (seed 000) for a slot of the given backing.</summary>
    public static Workload PageTableTest(PageTableStage stage, Backing backing, int slot = 1)
    {
        VmOptions.CheckDefined(stage, nameof(stage));
        VmOptions.CheckDefined(backing, nameof(backing));
        long large = backing.PageSize(), host = 4096;
        var common = new Workload { Slot = slot, Sharing = VcpuSharing.Overlap, Passes = 1, SyncEachPass = true };
        switch (stage)
        {
            case PageTableStage.CreateMappings:
                return common with { Stride = large, Roles = VcpuRoles.EvenWriteOddRead, Name = "KVM_CREATE_MAPPINGS" };
            case PageTableStage.UpdateMappings when backing == Backing.Anonymous:
                return common with { Stride = host, WritePercent = 100, Name = "KVM_UPDATE_MAPPINGS" };
            case PageTableStage.UpdateMappings:
            {
                long perLarge = large / host, half = perLarge / 2;
                return common with
                {
                    Stride = large, Name = "KVM_UPDATE_MAPPINGS",
                    // Write the first 4 KiB page (breaks the block mapping), then read the upper half page by page.
                    Accesses = [StrideAccess.Write(0), StrideAccess.Read(half * host, (int)(perLarge - half), host)],
                };
            }
            case PageTableStage.AdjustMappings:
                return common with { Stride = host, WritePercent = 0, Name = "KVM_ADJUST_MAPPINGS" };
            default:
                throw new ArgumentOutOfRangeException(nameof(stage), stage, null);
        }
    }

    /// <summary>The role of vCPU <paramref name="vcpu"/>.</summary>
    public VcpuRole RoleOf(int vcpu) => Roles switch
    {
        VcpuRoles.EvenWriteOddRead => vcpu % 2 == 0 ? VcpuRole.Writer : VcpuRole.Reader,
        _ => VcpuRole.Mixed,
    };

    internal string RangeText => (Gpa is { } g ? $"gpa 0x{g:x}" : $"slot {Slot}") +
        (Length is { } l ? $", {new Measure.Size(l)}" : Gpa is null ? " (all of it)" : " to the end of its slot");

    /// <inheritdoc/>
    public override string ToString()
    {
        var what = Name ?? "workload";
        return $"{what}: {RangeText}, stride {new Measure.Size(Stride)}+{Offset}, {EffectiveAccesses.Length} access kind(s), " +
               $"{(Roles == VcpuRoles.EvenWriteOddRead ? "even write/odd read" : $"{WritePercent}% writes")}, {Order}, {Sharing}, {Passes} pass(es)";
    }
}
