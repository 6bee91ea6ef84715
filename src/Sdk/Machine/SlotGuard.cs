namespace VirtLab.Sdk.Machine;

/// <summary>
/// The teardown discipline for everything that may outlive a check: host accesses to guest memory, dirty-log ioctls
/// and dirty-ring reads. A thread announces what it is about to use (a memslot, or the VM for its fds and ring
/// mappings) with a plain store into its own table — no atomics or locks on the hot path — then checks that it is
/// still current. A writer that retires it (RemoveSlot, ResizeSlot, Dispose) first marks it gone, issues a
/// process-wide memory barrier and waits until no thread announces it (an asymmetric Dekker handshake): a user that
/// found its object current is visible to the writer by then. Only after that does the writer munmap memory or close
/// fds, so an access completes on live memory or throws, and the kernel never gets a closed (maybe reused) fd.
/// </summary>
internal sealed class SlotGuard
{
    const int MaxDepth = 4; // nested uses per thread (a copy between two guest buffers holds two)

    readonly object?[] held = new object?[MaxDepth];
    int depth;

    [ThreadStatic] static SlotGuard? current;
    static readonly List<WeakReference<SlotGuard>> all = []; // one per thread that ever used guest memory; pruned as threads die

    /// <summary>Announces that the calling thread uses <paramref name="target"/> until <see cref="Use.Dispose"/>.
    /// The caller must then check that <paramref name="target"/> is still current (not removed, VM not disposed).</summary>
    public static Use Enter(object target)
    {
        var g = current ?? Register();
        int d = g.depth;
        if (d == MaxDepth)
            throw new InvalidOperationException($"more than {MaxDepth} nested guest-memory accesses on one thread; release one first");
        g.held[d] = target; // a plain store: the writer's process-wide barrier orders it before our check of `target`
        g.depth = d + 1;
        return new Use(g, d);
    }

    static SlotGuard Register()
    {
        var g = new SlotGuard();
        lock (all)
        {
            all.RemoveAll(w => !w.TryGetTarget(out _));
            all.Add(new WeakReference<SlotGuard>(g));
        }
        return current = g;
    }

    /// <summary>Waits until no thread announces any of <paramref name="gone"/>; the caller has already marked them gone,
    /// so no new announcement of them gets past its check.</summary>
    public static void WaitUntilUnused(IReadOnlyCollection<object> gone)
    {
        if (gone.Count == 0) return;
        Interlocked.MemoryBarrierProcessWide();
        List<SlotGuard> guards = [];
        lock (all)
            foreach (var w in all)
                if (w.TryGetTarget(out var g)) guards.Add(g);
        var spin = new SpinWait();
        foreach (var g in guards)
            for (int i = 0; i < MaxDepth; i++)
                while (Volatile.Read(ref g.held[i]) is { } o && gone.Contains(o)) spin.SpinOnce();
    }

    /// <summary>One announcement; dispose it when done (uses nest, and end in reverse order).</summary>
    public readonly struct Use(SlotGuard guard, int level) : IDisposable
    {
        public void Dispose()
        {
            Volatile.Write(ref guard.held[level], null); // release: our accesses happen before the writer sees it free
            guard.depth = level;
        }
    }
}
