using VirtLab.Sdk.Machine;

namespace VirtLab.Plugins.Balloon.Guest;

/// <summary>
/// The guest kernel's buddy allocator over guest-physical 4 KiB frames: one free list per order 0 … <see cref="MaxOrder"/>
/// (Linux's MAX_PAGE_ORDER, 4 MiB blocks), blocks naturally aligned in PFN space, buddies merged on free. Allocation
/// takes the first block of the smallest order that fits and splits it, keeping the low half and putting the high
/// halves on the lower lists (Linux's <c>expand</c>), so successive single-page allocations walk upwards through memory.
/// The free lists live in host memory (Linux keeps them in struct page); the frames are the VM's real guest memory.
/// Thread-safe (one lock, as zone->lock).
/// </summary>
public sealed class GuestPageAllocator
{
    public const int MaxOrder = 10;

    readonly Lock zoneLock = new();
    readonly long basePfn;       // aligned to 2^MaxOrder, so index alignment equals PFN alignment
    readonly int frames;
    readonly sbyte[] freeOrder;  // order of the free block starting at this frame, else -1
    readonly int[] next, prev;   // free-list links by frame index; -1 ends a list
    readonly int[] head = new int[MaxOrder + 1];
    readonly long[] freeBlocks = new long[MaxOrder + 1];
    readonly DirtyBitmap ram;    // frames that are guest RAM the allocator manages
    readonly DirtyBitmap reported; // free blocks (by head frame) already reported to the host
    long freePages;

    /// <summary>Manages the 4 KiB frames of <paramref name="ranges"/> (PFN runs), all free at first.</summary>
    public GuestPageAllocator(IEnumerable<PageRun> ranges)
    {
        var list = ranges.Where(r => r.Count > 0).OrderBy(r => r.First).ToArray();
        if (list.Length == 0) throw new ArgumentException("the guest page allocator needs at least one non-empty range of guest RAM", nameof(ranges));
        for (int i = 1; i < list.Length; i++)
            if (list[i].First < list[i - 1].End)
                throw new ArgumentException($"guest RAM ranges overlap: PFNs {list[i - 1]} and {list[i]}", nameof(ranges));
        basePfn = list[0].First & ~((1L << MaxOrder) - 1);
        var end = list[^1].End;
        var span = end - basePfn;
        if (span > int.MaxValue / 2)
            throw new ArgumentException($"guest RAM spans {span} frames from PFN 0x{basePfn:x}; the allocator handles at most {int.MaxValue / 2} (4 TiB)", nameof(ranges));
        frames = (int)span;
        freeOrder = new sbyte[frames];
        Array.Fill(freeOrder, (sbyte)-1);
        next = new int[frames];
        prev = new int[frames];
        Array.Fill(head, -1);
        ram = new DirtyBitmap(frames);
        reported = new DirtyBitmap(frames);
        foreach (var r in list)
        {
            ram.SetRange(r.First - basePfn, r.Count);
            TotalPages += r.Count;
        }
        // Free every RAM range in the largest aligned blocks, from the top down, so the lowest block ends up at the head.
        foreach (var r in list.Reverse())
        {
            var blocks = new List<(long, int)>();
            for (long pfn = r.First; pfn < r.End;)
            {
                int order = MaxOrder;
                while (order > 0 && ((pfn & ((1L << order) - 1)) != 0 || pfn + (1L << order) > r.End)) order--;
                blocks.Add((pfn, order));
                pfn += 1L << order;
            }
            for (int i = blocks.Count - 1; i >= 0; i--) Push((int)(blocks[i].Item1 - basePfn), blocks[i].Item2);
        }
        freePages = TotalPages;
    }

    public long TotalPages { get; }

    public long FreePages { get { lock (zoneLock) return freePages; } }

    /// <summary>Free blocks per order (what <c>/proc/buddyinfo</c> shows).</summary>
    public long[] BuddyInfo { get { lock (zoneLock) return (long[])freeBlocks.Clone(); } }

    /// <summary>Whether <paramref name="pfn"/> is a frame this allocator manages.</summary>
    public bool IsRam(long pfn) => pfn >= basePfn && pfn - basePfn < frames && ram.Get(pfn - basePfn);

    /// <summary>Allocates a naturally aligned block of 2^<paramref name="order"/> frames; returns its PFN, or −1 when no block that large is free.</summary>
    public long Allocate(int order = 0)
    {
        CheckOrder(order);
        lock (zoneLock) return AllocateLocked(order);
    }

    /// <summary>
    /// Allocates up to <paramref name="maxPages"/> single frames into <paramref name="into"/> (balloon_page_alloc one
    /// page at a time, under one lock round trip per call to keep the model's own overhead out of stage a). Returns how many.
    /// </summary>
    public int AllocatePages(Span<long> into, int maxPages)
    {
        int n = 0;
        lock (zoneLock)
            for (; n < maxPages && n < into.Length; n++)
            {
                var p = AllocateLocked(0);
                if (p < 0) break;
                into[n] = p;
            }
        return n;
    }

    long AllocateLocked(int order)
    {
        int o = order;
        while (o <= MaxOrder && head[o] < 0) o++;
        if (o > MaxOrder) return -1;
        int i = head[o];
        Unlink(i, o);
        while (o > order)
        {
            o--;
            Push(i + (1 << o), o); // the high half goes back; keep the low half
        }
        freePages -= 1L << order;
        return basePfn + i;
    }

    /// <summary>Frees a block allocated with <see cref="Allocate"/> (or any aligned run of frames allocated page by page), merging buddies.</summary>
    public void Free(long pfn, int order = 0)
    {
        CheckOrder(order);
        lock (zoneLock) FreeLocked(pfn, order);
    }

    public void FreeAll(ReadOnlySpan<long> pfns)
    {
        lock (zoneLock)
            foreach (var p in pfns) FreeLocked(p, 0);
    }

    void FreeLocked(long pfn, int order)
    {
        long size = 1L << order;
        if (pfn < basePfn || pfn - basePfn > frames - size || (pfn & (size - 1)) != 0)
            throw new ArgumentOutOfRangeException(nameof(pfn), $"PFN 0x{pfn:x} order {order} is not an aligned block of the allocator's range [0x{basePfn:x}, 0x{basePfn + frames:x})");
        int i = (int)(pfn - basePfn);
        if (ram.CountRange(i, size) != size)
            throw new ArgumentException($"PFN 0x{pfn:x} order {order} includes frames that are not guest RAM", nameof(pfn));
        // A double free shows up as an overlap with a free block (checked at the block's own order and each larger one).
        bool free = OverlapsFreeBlockInside(i, order);
        for (int o = 0; o <= MaxOrder && !free; o++)
            free = freeOrder[i & ~((1 << o) - 1)] >= o; // a free block of order ≥ o starting there covers frame i
        if (free) throw new InvalidOperationException($"double free: PFN 0x{pfn:x} order {order} overlaps a free block");
        freePages += size;
        while (order < MaxOrder)
        {
            int buddy = i ^ (1 << order);
            if (buddy + (1 << order) > frames || freeOrder[buddy] != order) break;
            Unlink(buddy, order);
            i = Math.Min(i, buddy);
            order++;
        }
        Push(i, order);
    }

    bool OverlapsFreeBlockInside(int i, int order)
    {
        if (order == 0) return false;
        for (int k = i; k < i + (1 << order); k++) if (freeOrder[k] >= 0) return true;
        return false;
    }

    /// <summary>
    /// Free page reporting: takes up to <paramref name="max"/> free blocks of order ≥ <paramref name="minOrder"/> not yet
    /// reported off the free lists (isolated, as page_reporting does) and returns them; give them back with
    /// <see cref="ReturnReported"/> once the host has them.
    /// </summary>
    public List<(long Pfn, int Order)> IsolateUnreported(int minOrder, int max)
    {
        CheckOrder(minOrder);
        var taken = new List<(long, int)>();
        lock (zoneLock)
            for (int o = MaxOrder; o >= minOrder && taken.Count < max; o--)
                for (int i = head[o]; i >= 0 && taken.Count < max;)
                {
                    int nx = next[i];
                    if (!reported.Get(i))
                    {
                        Unlink(i, o);
                        freePages -= 1L << o;
                        taken.Add((basePfn + i, o));
                    }
                    i = nx;
                }
        return taken;
    }

    /// <summary>Puts reported blocks back on their free lists, marked reported (not merged, so the mark stays exact).</summary>
    public void ReturnReported(IEnumerable<(long Pfn, int Order)> blocks)
    {
        lock (zoneLock)
            foreach (var (pfn, o) in blocks)
            {
                int i = (int)(pfn - basePfn);
                PushTail(i, o);
                reported.Set(i);
                freePages += 1L << o;
            }
    }

    /// <summary>Free pages in blocks already reported to the host.</summary>
    public long ReportedPages
    {
        get
        {
            lock (zoneLock)
            {
                long n = 0;
                foreach (var i in reported.SetPages) n += 1L << freeOrder[i];
                return n;
            }
        }
    }

    void Push(int i, int order)
    {
        reported.Clear(i);
        freeOrder[i] = (sbyte)order;
        prev[i] = -1;
        next[i] = head[order];
        if (head[order] >= 0) prev[head[order]] = i;
        head[order] = i;
        freeBlocks[order]++;
    }

    void PushTail(int i, int order)
    {
        // Reported blocks go to the tail (Linux does the same) so fresh allocations prefer unreported memory.
        freeOrder[i] = (sbyte)order;
        next[i] = -1;
        int t = head[order];
        if (t < 0) { prev[i] = -1; head[order] = i; }
        else
        {
            while (next[t] >= 0) t = next[t];
            next[t] = i;
            prev[i] = t;
        }
        freeBlocks[order]++;
    }

    void Unlink(int i, int order)
    {
        if (prev[i] >= 0) next[prev[i]] = next[i]; else head[order] = next[i];
        if (next[i] >= 0) prev[next[i]] = prev[i];
        freeOrder[i] = -1;
        reported.Clear(i);
        freeBlocks[order]--;
    }

    static void CheckOrder(int order)
    {
        if (order is < 0 or > MaxOrder) throw new ArgumentOutOfRangeException(nameof(order), $"order must be 0 … {MaxOrder}; got {order}");
    }

    public override string ToString() => $"buddy allocator: {FreePages} of {TotalPages} pages free; per order {string.Join(" ", BuddyInfo)}";
}
