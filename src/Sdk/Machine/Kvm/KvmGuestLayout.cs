namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// Where guest code sees each memslot (the gva windows): pure arithmetic over the slots' gpa ranges, so it is
/// tested without KVM. <see cref="KvmPageTables"/> then writes page tables for <see cref="Mappings"/>.
/// <para>
/// Gpa-adjacent memslots form one run that keeps a single gpa→gva offset, so a workload spanning adjacent slots stays
/// linear. Runs below 64 TiB are identity-mapped; the others (e.g. the test slot at the top of a 52-bit guest-physical
/// space, beyond the 47-bit canonical half) get windows from 64 TiB up, 1 GiB aligned relative to their gpa so
/// 2 MiB / 1 GiB guest pages still fit. The system slot (gpa 0) is always identity-mapped.
/// </para>
/// </summary>
internal sealed class KvmGuestLayout
{
    public const ulong IdentityLimit = 1ul << 46, Canonical = 1ul << 47, WindowAlign = 1ul << 30;

    /// <summary>A run of gpa-adjacent slots [Start, End) seen at gva = gpa - Delta.</summary>
    public readonly record struct GvaRun(ulong Start, ulong End, ulong Delta)
    {
        public ulong Gva => Start - Delta;
    }

    public ulong SystemSize { get; }
    public IReadOnlyList<GvaRun> Runs { get; }
    /// <summary>Per slot (the system slot first): gpa, gva, size, what the page tables map.</summary>
    public IReadOnlyList<GuestMapping> Mappings { get; }

    /// <summary>The layout before any slot is known (nothing mapped; <see cref="GvaOf"/> only knows the system slot).</summary>
    public static readonly KvmGuestLayout Empty = new(0, [], []);

    private KvmGuestLayout(ulong systemSize, List<GvaRun> runs, List<GuestMapping> maps)
    {
        SystemSize = systemSize;
        Runs = runs;
        Mappings = maps;
    }

    /// <summary>Lay out the system slot of <paramref name="systemSize"/> bytes and the user slots (gpa, size; non-overlapping).</summary>
    public static KvmGuestLayout Plan(ulong systemSize, IEnumerable<(ulong Gpa, ulong Size)> slots)
    {
        var maps = new List<GuestMapping> { new(0, 0, systemSize) };
        var runs = new List<GvaRun>();
        ulong window = IdentityLimit;
        var ordered = slots.OrderBy(r => r.Gpa).ToList();
        for (int i = 0; i < ordered.Count;)
        {
            ulong start = ordered[i].Gpa, end = ordered[i].Gpa + ordered[i].Size;
            int j = i + 1;
            while (j < ordered.Count && ordered[j].Gpa == end) end += ordered[j++].Size;
            ulong delta = 0;
            if (end > IdentityLimit)
            {
                ulong gva = window + (start & (WindowAlign - 1));
                delta = start - gva;
                window = (gva + (end - start) + WindowAlign - 1) & ~(WindowAlign - 1);
                if (window > Canonical)
                    throw new NotSupportedException("guest memory above 64 TiB of gpa exceeds the 64 TiB of guest-virtual windows (4-level paging)");
            }
            runs.Add(new GvaRun(start, end, delta));
            for (int k = i; k < j; k++) maps.Add(new(ordered[k].Gpa, ordered[k].Gpa - delta, ordered[k].Size));
            i = j;
        }
        return new KvmGuestLayout(systemSize, runs, maps);
    }

    /// <summary>Guest-virtual address of a guest-physical address in the system slot or a user memslot.</summary>
    public ulong GvaOf(ulong gpa)
    {
        if (gpa < SystemSize) return gpa;
        foreach (var r in Runs)
            if (gpa >= r.Start && gpa < r.End) return gpa - r.Delta;
        throw new ArgumentOutOfRangeException(nameof(gpa), $"gpa 0x{gpa:x} is in no memslot the guest page tables map");
    }
}
