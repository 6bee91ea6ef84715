using System.Diagnostics;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// Bare KVM ioctls in tight loops on a VM's fds, bypassing the Machine layer: the baseline against which the
/// harness (<see cref="MemSlot.GetDirtyLog(DirtyBitmap)"/>, ClearDirtyLog) is measured by scripts/bench-dirty-log.csx.
/// Buffers are pinned and reused across calls, like a C program's static arrays. Each method returns the loop's
/// elapsed time in seconds at Stopwatch resolution (a TimeSpan would round single calls to 100 ns).
/// </summary>
public static unsafe class KvmRawIoctls
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
        int fd = Machine(vm).VmFd;
        var bitmap = Pinned(ref _getBuffer, slot.Pages, ones: false);
        fixed (ulong* p = bitmap)
        {
            var log = new kvm_dirty_log { slot = (uint)slot.Id, dirty_bitmap = (ulong)p };
            nuint req = KvmIoctl.KVM_GET_DIRTY_LOG;
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < iterations; i++)
                if (Libc.ioctl(fd, req, &log) < 0) throw KvmException.Last("KVM_GET_DIRTY_LOG", $"slot {slot.Id}");
            return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
        }
    }

    /// <summary>
    /// <paramref name="iterations"/> × KVM_GET_DIRTY_LOG into <paramref name="into"/>'s own words: the same destination
    /// as the harness call, because copy_to_user's cost depends on where the buffer sits (alignment, cache).
    /// </summary>
    public static double GetDirtyLog(Vm vm, MemSlot slot, DirtyBitmap into, int iterations)
    {
        int fd = Machine(vm).VmFd;
        if (into.Pages != slot.Pages) throw new ArgumentException($"the bitmap has {into.Pages} pages but slot {slot.Id} has {slot.Pages}", nameof(into));
        fixed (ulong* p = into.Words)
        {
            var log = new kvm_dirty_log { slot = (uint)slot.Id, dirty_bitmap = (ulong)p };
            nuint req = KvmIoctl.KVM_GET_DIRTY_LOG;
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < iterations; i++)
                if (Libc.ioctl(fd, req, &log) < 0) throw KvmException.Last("KVM_GET_DIRTY_LOG", $"slot {slot.Id}");
            return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
        }
    }

    /// <summary><paramref name="iterations"/> × KVM_CLEAR_DIRTY_LOG of the whole slot with <paramref name="mask"/>'s words.</summary>
    public static double ClearDirtyLog(Vm vm, MemSlot slot, DirtyBitmap mask, int iterations)
    {
        int fd = Machine(vm).VmFd;
        if (mask.Pages != slot.Pages) throw new ArgumentException($"the mask has {mask.Pages} pages but slot {slot.Id} has {slot.Pages}", nameof(mask));
        fixed (ulong* p = mask.Words)
        {
            var c = new kvm_clear_dirty_log { slot = (uint)slot.Id, first_page = 0, num_pages = checked((uint)slot.Pages), dirty_bitmap = (ulong)p };
            nuint req = KvmIoctl.KVM_CLEAR_DIRTY_LOG;
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < iterations; i++)
                if (Libc.ioctl(fd, req, &c) < 0) throw KvmException.Last("KVM_CLEAR_DIRTY_LOG", $"slot {slot.Id}");
            return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
        }
    }

    /// <summary><paramref name="iterations"/> × KVM_CLEAR_DIRTY_LOG of the whole slot with an all-ones mask; elapsed seconds.</summary>
    public static double ClearDirtyLog(Vm vm, MemSlot slot, int iterations)
    {
        int fd = Machine(vm).VmFd;
        var mask = Pinned(ref _clearMask, slot.Pages, ones: true);
        fixed (ulong* p = mask)
        {
            var c = new kvm_clear_dirty_log { slot = (uint)slot.Id, first_page = 0, num_pages = checked((uint)slot.Pages), dirty_bitmap = (ulong)p };
            nuint req = KvmIoctl.KVM_CLEAR_DIRTY_LOG;
            long t0 = Stopwatch.GetTimestamp();
            for (int i = 0; i < iterations; i++)
                if (Libc.ioctl(fd, req, &c) < 0) throw KvmException.Last("KVM_CLEAR_DIRTY_LOG", $"slot {slot.Id}");
            return (Stopwatch.GetTimestamp() - t0) / (double)Stopwatch.Frequency;
        }
    }
}
