namespace VirtLab.Sdk.Machine;

/// <summary>
/// The teardown discipline for everything that may outlive a check: host accesses to guest memory, dirty-log ioctls
/// and dirty-ring reads. A thread announces what it is about to use (a memslot, or the VM for its fds and ring
/// mappings, by their <see cref="NewSerial">serial</see>) with a plain store into its own table — no atomics, locks or
/// GC write barriers on the hot path — then checks that it is still current. A writer that retires it (RemoveSlot,
/// ResizeSlot, Dispose) first marks it gone, issues a process-wide memory barrier and waits until no thread announces
/// it (an asymmetric Dekker handshake): a user that found its object current is visible to the writer by then. Only
/// after that does the writer munmap memory or close fds, so an access completes on live memory or throws, and the
/// kernel never gets a closed (maybe reused) fd. Objects used on hot paths (a virtqueue's chains) may own slots in a
/// shared table instead, claimed with one interlocked exchange: no thread-local lookup, and still safe when two threads
/// use the same object (the second falls back to its thread's table).
/// </summary>
internal static class SlotGuard
{
    const int MaxDepth = 4; // nested uses per thread (a copy between two guest buffers holds two)

    [ThreadStatic] static long[]? _held; // this thread's announcements; 0 = free
    static readonly List<WeakReference<long[]>> All = []; // one table per thread that ever announced, and the shared tables; pruned as they die
    static long _lastSerial;

    /// <summary>A process-unique, non-zero serial for a memslot or VM.</summary>
    public static long NewSerial() => Interlocked.Increment(ref _lastSerial);

    /// <summary>Announces that the calling thread uses the object with <paramref name="serial"/> until
    /// <see cref="Use.Dispose"/>. The caller must then check that the object is still current (slot not removed, VM not disposed).</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static Use Enter(long serial)
    {
        var t = _held ?? Register();
        int d = 0;
        while (t[d] != 0)
            if (++d == MaxDepth) TooDeep();
        t[d] = serial; // a plain store: the writer's process-wide barrier orders it before our check of the object
        return new Use(t, d);
    }

    /// <summary>Registers the calling thread's table now (measured: 50–100 µs on a thread's first announcement, which would
    /// otherwise land inside its first timed dirty-log or guest-memory call). <see cref="Vm.Create(VmOptions)"/> calls it.</summary>
    public static void PrepareThread() => _ = _held ?? Register();

    /// <summary>Whether the calling thread has its table (tests).</summary>
    internal static bool ThreadRegistered => _held is not null;

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    static void TooDeep() => throw new InvalidOperationException($"more than {MaxDepth} nested guest-memory accesses on one thread; release one first");

    static long[] Register() => _held = Add(new long[MaxDepth]);

    /// <summary>
    /// A table of <paramref name="count"/> announcement slots that belong to objects rather than threads (a virtqueue's
    /// chains, one slot per head): whoever uses one claims it with <see cref="TryEnterShared"/>, which needs no
    /// thread-local lookup. The writers' wait covers these tables as long as the table is alive.
    /// </summary>
    public static long[] NewSharedSlots(int count) => Add(new long[count]);

    static long[] Add(long[] table)
    {
        lock (All)
        {
            // Prune dead tables when the list has doubled since the last prune: amortised O(1) per table even when
            // many queues are made and dropped between collections (the hostile-ring property tests).
            if (All.Count >= _pruneAt)
            {
                All.RemoveAll(w => !w.TryGetTarget(out _));
                _pruneAt = Math.Max(64, All.Count * 2);
            }
            All.Add(new WeakReference<long[]>(table));
        }
        return table;
    }

    static int _pruneAt = 64; // under All

    /// <summary>
    /// Announces <paramref name="serial"/> in slot <paramref name="index"/> of a <see cref="NewSharedSlots">shared table</see>
    /// if it is free (an interlocked claim: a full fence, so the caller's check of the object comes after it); false when
    /// another use holds the slot (then use <see cref="Enter"/>). The caller must then check that the object is still current.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static bool TryEnterShared(long[] table, int index, long serial, out Use use)
    {
        use = new Use(table, index);
        return Interlocked.CompareExchange(ref table[index], serial, 0) == 0;
    }

    /// <summary>Waits until no thread announces any of <paramref name="gone"/>; the caller has already marked them gone,
    /// so no new announcement of them gets past its check.</summary>
    public static void WaitUntilUnused(IReadOnlySet<long> gone)
    {
        if (gone.Count == 0) return;
        Interlocked.MemoryBarrierProcessWide();
        List<long[]> tables = [];
        lock (All)
            foreach (var w in All)
                if (w.TryGetTarget(out var t)) tables.Add(t);
        var spin = new SpinWait();
        foreach (var t in tables)
            for (int i = 0; i < t.Length; i++)
                while (Volatile.Read(ref t[i]) is var s and not 0 && gone.Contains(s)) spin.SpinOnce();
    }

    /// <summary>One announcement; dispose it when done (nested uses end in reverse order).</summary>
    public readonly struct Use(long[] table, int level) : IDisposable
    {
        public void Dispose() => Volatile.Write(ref table[level], 0); // release: our accesses happen before the writer sees it free
    }
}
