using System.Diagnostics;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Native;

namespace VirtLab.Plugins.Balloon.Host;


/// <summary>Time the device spent in stages c (address translation) and d (madvise), and what it did.</summary>
public struct DeviceTicks
{
    public long Translate, Madvise, DiscardCalls, HintCalls, DiscardedBytes, DiscardErrors;

    public void Add(in DeviceTicks o)
    {
        Translate += o.Translate; Madvise += o.Madvise; DiscardCalls += o.DiscardCalls; HintCalls += o.HintCalls;
        DiscardedBytes += o.DiscardedBytes; DiscardErrors += o.DiscardErrors;
    }
}

/// <summary>
/// The device's view of guest RAM: validates pages against the memslots (every slot but system slot 0 is RAM the
/// balloon may take), keeps which 4 KiB pages are in the balloon (a bitmap per slot), translates gpa → hva through the
/// memslots and discards. On huge-page backings (hugetlb always; THP unless disabled) a host page is discarded only
/// once all its 4 KiB parts are in the balloon — QEMU's partially-ballooned-page rule, but tracked across requests
/// through the ballooned bitmap where QEMU forgets a partial page at the end of each request. A request is checked
/// whole before anything happens: refused requests change nothing.
/// </summary>
internal sealed class DiscardEngine
{
    readonly Vm vm;
    readonly bool wholeThpPages;
    readonly Dictionary<MemSlot, DirtyBitmap> ballooned = new(ReferenceEqualityComparer.Instance);
    readonly List<Segment> segments = [];
    long balloonedPages;

    public DiscardEngine(Vm vm, bool wholeThpPages)
    {
        this.vm = vm;
        this.wholeThpPages = wholeThpPages;
    }

    public long BalloonedPages => Volatile.Read(ref balloonedPages);

    readonly record struct Segment(MemSlot Slot, DirtyBitmap Bits, long FirstPage, long Pages, HostRange Range);

    /// <summary>The PFNs in the balloon, ascending.</summary>
    public List<long> BalloonedPfns()
    {
        var list = new List<long>();
        lock (ballooned)
            foreach (var (slot, bits) in ballooned.OrderBy(kv => kv.Key.Gpa))
                foreach (var p in bits.SetPages) list.Add((long)(slot.BaseGfn + (ulong)p));
        return list;
    }

    /// <summary>Host pages with some but not all 4 KiB parts in the balloon (waiting to be discarded).</summary>
    public long PartialHostPages()
    {
        long n = 0;
        lock (ballooned)
            foreach (var (slot, bits) in ballooned)
            {
                long sub = HostPageSize(slot) / VirtioBalloon.PageSize;
                if (sub == 1) continue;
                for (long hp = 0; hp < slot.Pages / sub; hp++)
                {
                    var c = bits.CountRange(hp * sub, sub);
                    if (c != 0 && c != sub) n++;
                }
            }
        return n;
    }

    long HostPageSize(MemSlot slot)
        => slot.Backing.IsHugetlb() || (slot.Backing == Backing.AnonymousThp && wholeThpPages) ? slot.PageSize : VirtioBalloon.PageSize;

    /// <summary>Inflate (stage c: validate + translate; stage d: discard). False, with nothing changed, when refused.</summary>
    public bool Inflate(List<PageRun> runs, DiscardMode mode, ref DeviceTicks ticks, out BalloonError error)
    {
        long t0 = Stopwatch.GetTimestamp();
        if (!Resolve(runs, BalloonState.Out, out error)) { ticks.Translate += Stopwatch.GetTimestamp() - t0; return false; }
        lock (ballooned)
            foreach (var s in segments) s.Bits.SetRange(s.FirstPage, s.Pages);
        long added = 0;
        foreach (var s in segments) added += s.Pages;
        Interlocked.Add(ref balloonedPages, added);
        long t1 = Stopwatch.GetTimestamp();
        ticks.Translate += t1 - t0;

        MemSlot? lastSlot = null;
        long lastHost = -1;
        foreach (var s in segments)
        {
            long hp = HostPageSize(s.Slot);
            if (hp == VirtioBalloon.PageSize)
            {
                if (mode == DiscardMode.PerPage)
                    for (long k = 0; k < s.Pages; k++) Discard(s.Slot, (s.FirstPage + k) << 12, VirtioBalloon.PageSize, ref ticks);
                else
                    Discard(s.Slot, s.FirstPage << 12, s.Pages << 12, ref ticks);
                continue;
            }
            // Huge host pages: only those now wholly in the balloon, each once (sorted segments may share an edge page).
            long sub = hp / VirtioBalloon.PageSize;
            long runStart = -1, runEnd = -1;
            for (long h = s.FirstPage / sub; h <= (s.FirstPage + s.Pages - 1) / sub; h++)
            {
                bool inside = h * sub >= s.FirstPage && (h + 1) * sub <= s.FirstPage + s.Pages;
                if (!inside && s.Bits.CountRange(h * sub, sub) != sub) continue;
                if (lastSlot == s.Slot && lastHost == h) continue;
                lastSlot = s.Slot;
                lastHost = h;
                if (mode == DiscardMode.PerPage) { Discard(s.Slot, h * hp, hp, ref ticks); continue; }
                if (h == runEnd) { runEnd++; continue; }
                if (runStart >= 0) Discard(s.Slot, runStart * hp, (runEnd - runStart) * hp, ref ticks);
                runStart = h;
                runEnd = h + 1;
            }
            if (runStart >= 0) Discard(s.Slot, runStart * hp, (runEnd - runStart) * hp, ref ticks);
        }
        ticks.Madvise += Stopwatch.GetTimestamp() - t1;
        return true;
    }

    /// <summary>Deflate: the pages leave the balloon; with <see cref="DeflateHint.WillNeed"/> their host pages are hinted.</summary>
    public bool Deflate(List<PageRun> runs, DiscardMode mode, DeflateHint hint, ref DeviceTicks ticks, out BalloonError error)
    {
        long t0 = Stopwatch.GetTimestamp();
        if (!Resolve(runs, BalloonState.In, out error)) { ticks.Translate += Stopwatch.GetTimestamp() - t0; return false; }
        lock (ballooned)
            foreach (var s in segments) s.Bits.ClearRange(s.FirstPage, s.Pages);
        long removed = 0;
        foreach (var s in segments) removed += s.Pages;
        Interlocked.Add(ref balloonedPages, -removed);
        long t1 = Stopwatch.GetTimestamp();
        ticks.Translate += t1 - t0;
        if (hint == DeflateHint.WillNeed)
        {
            long lastHinted = -1;
            foreach (var s in segments)
            {
                long hp = s.Slot.PageSize;
                if (mode == DiscardMode.PerPage)
                    for (long k = 0; k < s.Pages; k++)
                    {
                        var gpa = s.Range.Gpa + (ulong)(k << 12);
                        var host = (long)(gpa / (ulong)hp);
                        if (host == lastHinted) continue; // one hint per host page
                        lastHinted = host;
                        Hint(s.Slot, (long)(gpa - s.Slot.Gpa), VirtioBalloon.PageSize, ref ticks);
                    }
                else Hint(s.Slot, s.FirstPage << 12, s.Pages << 12, ref ticks);
            }
        }
        ticks.Madvise += Stopwatch.GetTimestamp() - t1;
        return true;
    }

    /// <summary>
    /// Free page reporting: the ranges are free in the guest (not in the balloon); each must be aligned to its backing's
    /// host page size. Discarded whole; the balloon bitmap is not touched.
    /// </summary>
    public bool Report(List<(ulong Gpa, long Length)> ranges, ref DeviceTicks ticks, out BalloonError error)
    {
        long t0 = Stopwatch.GetTimestamp();
        var runs = new List<PageRun>(ranges.Count);
        foreach (var (gpa, len) in ranges)
        {
            if (gpa % VirtioBalloon.PageSize != 0 || len <= 0 || len % VirtioBalloon.PageSize != 0)
            {
                ticks.Translate += Stopwatch.GetTimestamp() - t0;
                error = new(BalloonErrorKind.Misaligned, $"reported range gpa 0x{gpa:x} length {len} is not a positive whole number of 4 KiB pages");
                return false;
            }
            runs.Add(new PageRun((long)(gpa >> 12), len >> 12));
        }
        if (!Resolve(runs, BalloonState.Out, out error)) { ticks.Translate += Stopwatch.GetTimestamp() - t0; return false; }
        foreach (var s in segments)
        {
            long hp = s.Slot.PageSize;
            if (s.Range.Gpa % (ulong)hp != 0 || s.Range.Length % hp != 0)
            {
                ticks.Translate += Stopwatch.GetTimestamp() - t0;
                error = new(BalloonErrorKind.Misaligned, $"reported range {s.Range} is not aligned to slot {s.Slot.Id}'s {new Sdk.Measure.Size(hp)} host pages");
                return false;
            }
        }
        long t1 = Stopwatch.GetTimestamp();
        ticks.Translate += t1 - t0;
        foreach (var s in segments) Discard(s.Slot, s.FirstPage << 12, s.Pages << 12, ref ticks);
        ticks.Madvise += Stopwatch.GetTimestamp() - t1;
        return true;
    }

    enum BalloonState { In, Out }

    /// <summary>Sorts the runs, refuses overlaps, resolves each to memslot segments (RAM only), checks their balloon state.</summary>
    bool Resolve(List<PageRun> runs, BalloonState required, out BalloonError error)
    {
        segments.Clear();
        error = default;
        if (runs.Count > 1)
        {
            runs.Sort(static (a, b) => a.First.CompareTo(b.First));
            for (int i = 1; i < runs.Count; i++)
                if (runs[i].First < runs[i - 1].End)
                {
                    error = runs[i].First == runs[i - 1].First && runs[i].Count == 1 && runs[i - 1].Count == 1
                        ? new(BalloonErrorKind.Overlap, $"PFN 0x{runs[i].First:x} appears twice in one request")
                        : new(BalloonErrorKind.Overlap, $"entries overlap: PFNs {Describe(runs[i - 1])} and {Describe(runs[i])}");
                    return false;
                }
        }
        foreach (var r in runs)
        {
            ulong gpa = (ulong)r.First << 12, left = (ulong)r.Count << 12;
            while (left > 0)
            {
                if (!vm.Memory.TryTranslatePrefix(gpa, (long)Math.Min(left, long.MaxValue), out var range))
                {
                    error = new(BalloonErrorKind.OutsideRam, $"PFN 0x{gpa >> 12:x} (gpa 0x{gpa:x}) of {Describe(r)} is in no memslot; guest RAM: {RamText()}");
                    return false;
                }
                if (range.Slot.IsSystem)
                {
                    error = new(BalloonErrorKind.OutsideRam, $"PFN 0x{gpa >> 12:x} of {Describe(r)} is in system slot 0 (the backend's code, stacks and page tables), not guest RAM the balloon may take");
                    return false;
                }
                segments.Add(new Segment(range.Slot, Bits(range.Slot), range.SlotOffset >> 12, range.Length >> 12, range));
                gpa = range.EndGpa;
                left -= (ulong)range.Length;
            }
        }
        // Only once every page is known to be RAM: the balloon state of each.
        foreach (var s in segments)
        {
            long state = s.Bits.CountRange(s.FirstPage, s.Pages);
            if (required == BalloonState.Out && state != 0)
            {
                error = new(BalloonErrorKind.AlreadyInBalloon, $"PFN 0x{s.Slot.BaseGfn + (ulong)s.Bits.NextSetPage(s.FirstPage):x} is already in the balloon");
                return false;
            }
            if (required == BalloonState.In && state != s.Pages)
            {
                error = new(BalloonErrorKind.NotInBalloon, $"PFN 0x{s.Slot.BaseGfn + (ulong)s.Bits.NextClearPage(s.FirstPage):x} is not in the balloon");
                return false;
            }
        }
        return true;
    }

    DirtyBitmap Bits(MemSlot slot)
    {
        if (ballooned.TryGetValue(slot, out var b)) return b;
        lock (ballooned)
        {
            // A slot that left the VM takes its balloon state with it (its memory is gone).
            foreach (var gone in ballooned.Keys.Where(s => !vm.Slots.Contains(s)).ToArray())
            {
                Interlocked.Add(ref balloonedPages, -ballooned[gone].Count);
                ballooned.Remove(gone);
            }
            b = new DirtyBitmap(slot.Pages);
            ballooned[slot] = b;
            return b;
        }
    }

    /// <summary>Stage d: one MADV_DONTNEED / hole punch over [offset, offset+length) of the slot (no lookup: stage c did it).</summary>
    void Discard(MemSlot slot, long offset, long length, ref DeviceTicks ticks)
    {
        ticks.DiscardCalls++;
        try
        {
            vm.Memory.Discard(vm.Memory.SlotRange(slot, offset, length));
            ticks.DiscardedBytes += length;
        }
        catch (Exception e) when (e is LibcException or InvalidOperationException or ArgumentException)
        {
            // As QEMU: a failed discard is reported (counted) and not fatal; the page stays in the balloon.
            ticks.DiscardErrors++;
            LastDiscardError = e.Message;
        }
    }

    void Hint(MemSlot slot, long offset, long length, ref DeviceTicks ticks)
    {
        ticks.HintCalls++;
        try
        {
            vm.Memory.WillNeed(vm.Memory.SlotRange(slot, offset, length));
        }
        catch (Exception e) when (e is LibcException or InvalidOperationException or ArgumentException)
        {
            ticks.DiscardErrors++;
            LastDiscardError = e.Message;
        }
    }

    public string? LastDiscardError { get; private set; }

    static string Describe(PageRun r) => r.Count == 1 ? $"0x{r.First:x}" : $"[0x{r.First:x}, 0x{r.End:x})";

    string RamText() => string.Join("; ", vm.Slots.Where(s => !s.IsSystem).Select(s => $"PFNs [0x{s.BaseGfn:x}, 0x{s.BaseGfn + (ulong)s.Pages:x}) slot {s.Id}"));
}
