using System.Diagnostics;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;

namespace VirtLab.Sdk.Machine.Kvm.Benchmarks;

/// <summary>
/// Bare KVM ioctls in tight loops on a VM's fds, bypassing the Machine layer: the baseline against which the
/// harness (<see cref="MemSlot.GetDirtyLog(DirtyBitmap)"/>, ClearDirtyLog) is measured by scripts/bench-dirty-log.csx.
/// The loops call the same typed VM-fd methods as the backend (<see cref="KvmVmFd"/>), so the difference measured
/// is the harness around them. Buffers are pinned and reused across calls, like a C program's static arrays. Each method returns the loop's
/// elapsed time in seconds at Stopwatch resolution (a TimeSpan would round single calls to 100 ns).
/// </summary>
public static class KvmRawIoctls
{
    [ThreadStatic] private static ulong[]? _getBuffer, _clearMask;

    private static KvmMachine Machine(Vm vm)
    {
        vm.ThrowIfDisposed();
        return (vm as KvmVm ?? throw new NotSupportedException($"raw KVM ioctls need the KVM backend; this VM runs on {vm.Backend}")).Machine;
    }

    private static ulong[] Pinned(ref ulong[]? cache, long pages, bool ones)
    {
        int words = DirtyBitmap.WordsFor(pages);
        if (cache == null || cache.Length != words)
        {
            cache = GC.AllocateArray<ulong>(words, pinned: true);
            if (ones) Array.Fill(cache, ulong.MaxValue);
        }
        return cache;
    }

    /// <summary>The VM fd (for inspection; owned by the VM).</summary>
    public static int VmFd(Vm vm) => Machine(vm).VmFd;

    /// <summary><paramref name="iterations"/> × KVM_GET_DIRTY_LOG on <paramref name="slot"/> into one pinned buffer; elapsed seconds.</summary>
    public static double GetDirtyLog(Vm vm, MemSlot slot, int iterations)
    {
        var fd = Fd(vm, slot);
        // Safe because the buffer is pinned for the loop and holds the slot's whole bitmap (sized by Pinned).
        unsafe { fixed (ulong* p = Pinned(ref _getBuffer, slot.Pages, ones: false)) return GetLoop(fd, slot, p, iterations); }
    }

    /// <summary>
    /// <paramref name="iterations"/> × KVM_GET_DIRTY_LOG into <paramref name="into"/>'s own words: the same destination
    /// as the harness call, because copy_to_user's cost depends on where the buffer sits (alignment, cache).
    /// </summary>
    public static double GetDirtyLog(Vm vm, MemSlot slot, DirtyBitmap into, int iterations)
    {
        var fd = Fd(vm, slot);
        CheckWholeSlot(slot, into, "bitmap");
        // Safe because the bitmap's words are pinned for the loop and cover the whole slot (checked above).
        unsafe { fixed (ulong* p = into.Words) return GetLoop(fd, slot, p, iterations); }
    }

    /// <summary><paramref name="iterations"/> × KVM_CLEAR_DIRTY_LOG of the whole slot with <paramref name="mask"/>'s words.</summary>
    public static double ClearDirtyLog(Vm vm, MemSlot slot, DirtyBitmap mask, int iterations)
    {
        var fd = Fd(vm, slot);
        CheckWholeSlot(slot, mask, "mask");
        // Safe because the mask's words are pinned for the loop and cover the whole slot (checked above).
        unsafe { fixed (ulong* p = mask.Words) return ClearLoop(fd, slot, p, iterations); }
    }

    /// <summary><paramref name="iterations"/> × KVM_CLEAR_DIRTY_LOG of the whole slot with an all-ones mask; elapsed seconds.</summary>
    public static double ClearDirtyLog(Vm vm, MemSlot slot, int iterations)
    {
        var fd = Fd(vm, slot);
        // Safe because the buffer is pinned for the loop and holds the slot's whole bitmap (sized by Pinned).
        unsafe { fixed (ulong* p = Pinned(ref _clearMask, slot.Pages, ones: true)) return ClearLoop(fd, slot, p, iterations); }
    }

    /// <summary>The VM fd, once <paramref name="slot"/> is known to be one of this VM's current slots (the kernel writes
    /// npages bits of whatever slot has that id, so a stale slot object must not size the buffer).</summary>
    private static KvmVmFd Fd(Vm vm, MemSlot slot)
    {
        var m = Machine(vm);
        ArgumentNullException.ThrowIfNull(slot);
        if (slot.Vm != vm || vm.FindSlot(slot.Id) != slot) throw new ArgumentException($"{slot} is not a current memslot of this VM", nameof(slot));
        return m.VmFdHandle;
    }

    private static void CheckWholeSlot(MemSlot slot, DirtyBitmap bitmap, string what)
    {
        ArgumentNullException.ThrowIfNull(bitmap);
        if (bitmap.Pages != slot.Pages) throw new ArgumentException($"the {what} has {bitmap.Pages} pages but slot {slot.Id} has {slot.Pages}", what == "bitmap" ? "into" : "mask");
    }

    // Unsafe: the bitmap is a raw pointer, pinned by the caller for the whole loop (as a C program's static array).
    private static unsafe double GetLoop(KvmVmFd fd, MemSlot slot, ulong* bitmap, int iterations)
    {
        uint id = (uint)slot.Id;
        long t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < iterations; i++) fd.GetDirtyLog(id, bitmap);
        return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
    }

    private static unsafe double ClearLoop(KvmVmFd fd, MemSlot slot, ulong* mask, int iterations)
    {
        uint id = (uint)slot.Id, pages = checked((uint)slot.Pages);
        long t0 = Stopwatch.GetTimestamp();
        for (int i = 0; i < iterations; i++) fd.ClearDirtyLog(id, 0, pages, mask);
        return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
    }
}
