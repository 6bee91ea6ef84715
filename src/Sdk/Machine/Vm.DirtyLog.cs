using System.Collections.Immutable;
using VirtLab.Sdk.Measure;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Sdk.Machine;

/// <summary>Dirty logging: KVM_MEM_LOG_DIRTY_PAGES, KVM_GET_DIRTY_LOG / KVM_CLEAR_DIRTY_LOG with the kernel's checks in its order, the dirty ring.</summary>
public abstract partial class Vm
{
    // ---- dirty logging --------------------------------------------------------------------------

    internal void SetLogDirtyPages(MemSlot slot, bool on)
    {
        ThrowIfDisposed();
        lock (_slotLock)
        {
            ThrowIfDisposed();
            CheckOwned(slot);
            if (slot.LogDirtyPages == on) return; // KVM treats an unchanged flags update as a no-op
            SetMemoryRegion(slot, on);
            slot.SetLogFlag(on);
        }
    }

    internal void GetDirtyLog(MemSlot slot, DirtyBitmap into)
    {
        ArgumentNullException.ThrowIfNull(slot);
        ArgumentNullException.ThrowIfNull(into);
        // Announced before the checks: the kernel writes npages bits of whatever slot has this id at the time of the
        // ioctl, so the slot must not be resized (nor the VM fd closed) between the size check and the call.
        var call = SlotGuard.Enter(slot.Serial);
        try
        {
            ThrowIfDisposed();
            CheckOwned(slot);
            CheckNoRing("KVM_GET_DIRTY_LOG");
            CheckLogging(slot, "KVM_GET_DIRTY_LOG");
            if (into.Pages != slot.Pages)
                throw new ArgumentException($"the bitmap has {into.Pages} pages but slot {slot.Id} has {slot.Pages}", nameof(into));
            GetDirtyLogCore(slot, into.Words);
        }
        finally
        {
            call.Dispose();
        }
    }

    /// <summary>Checks in the kernel's order (kvm_clear_dirty_log_protect): ENXIO for a ring, EINVAL for first_page,
    /// ENOENT for a slot that does not log, EINVAL for the range and for num_pages.</summary>
    internal void ClearDirtyLog(MemSlot slot, long firstPage, long numPages, DirtyBitmap? mask)
    {
        ArgumentNullException.ThrowIfNull(slot);
        var call = SlotGuard.Enter(slot.Serial); // see GetDirtyLog
        try
        {
            ThrowIfDisposed();
            CheckOwned(slot);
            CheckNoRing("KVM_CLEAR_DIRTY_LOG");
            var n = slot.Pages;
            if (firstPage < 0 || numPages < 0)
                throw new ArgumentOutOfRangeException(nameof(firstPage), $"KVM_CLEAR_DIRTY_LOG: first_page ({firstPage}) and num_pages ({numPages}) must not be negative (they are unsigned in the kernel)");
            if (firstPage % 64 != 0)
                throw new ArgumentException(
                    $"KVM_CLEAR_DIRTY_LOG: first_page {firstPage} is not a multiple of 64 (the kernel would return EINVAL); use {firstPage / 64 * 64}", nameof(firstPage));
            CheckLogging(slot, "KVM_CLEAR_DIRTY_LOG");
            if (firstPage >= n || numPages > n - firstPage)
                throw new ArgumentOutOfRangeException(nameof(numPages),
                    $"KVM_CLEAR_DIRTY_LOG: pages [{firstPage}, {firstPage + numPages}) are outside slot {slot.Id}'s {n} pages " +
                    "(first_page must be below npages and the range inside the slot; the kernel would return EINVAL)");
            if (numPages % 64 != 0 && firstPage + numPages != n)
                throw new ArgumentException(
                    $"KVM_CLEAR_DIRTY_LOG: num_pages {numPages} is not a multiple of 64 and the range [{firstPage}, {firstPage + numPages}) does not end at the slot's end ({n}); " +
                    "num_pages may only be unaligned for the last chunk of a slot (the kernel would return EINVAL)", nameof(numPages));
            if (mask is not null && mask.Pages != n)
                throw new ArgumentException($"the mask has {mask.Pages} pages but slot {slot.Id} has {n}; pass a bitmap of the whole slot", nameof(mask));
            if (numPages == 0) return;
            ClearDirtyLogChecked(slot, firstPage, numPages, mask);
        }
        finally
        {
            call.Dispose();
        }
    }

    void ClearDirtyLogChecked(MemSlot slot, long firstPage, long numPages, DirtyBitmap? mask)
    {
        var words = DirtyBitmap.WordsFor(numPages);
        ReadOnlySpan<ulong> m;
        if (mask is not null) m = mask.Words.AsSpan((int)(firstPage >> 6), words);
        else
        {
            var all = new ulong[words];
            Array.Fill(all, ulong.MaxValue);
            if ((numPages & 63) != 0) all[^1] = (1UL << (int)(numPages & 63)) - 1;
            m = all;
        }
        ClearDirtyLogCore(slot, firstPage, numPages, m);
    }

    void CheckNoRing(string ioctl)
    {
        if (DirtyRing is not null)
            throw new InvalidOperationException($"{ioctl}: this VM tracks dirty pages with the dirty ring (the kernel returns ENXIO); use vm.DirtyRing.Harvest() and Reset()");
    }

    static void CheckLogging(MemSlot slot, string ioctl)
    {
        if (!slot.LogDirtyPages)
            throw new InvalidOperationException($"{ioctl}: slot {slot.Id} is not logging dirty pages (it has no dirty_bitmap; the kernel returns ENOENT); set LogDirtyPages = true first");
    }

    void CheckOwned(MemSlot slot)
    {
        ArgumentNullException.ThrowIfNull(slot);
        if (slot.Vm != this) throw new ArgumentException($"{slot} belongs to another VM", nameof(slot));
        if (slot.Removed) throw new InvalidOperationException($"memslot {slot.Id} was removed from this VM");
    }

    internal void HarvestDirtyRingInternal(int vcpu, List<DirtyGfn> into) => HarvestDirtyRingCore(vcpu, into);

    internal long ResetDirtyRingsInternal() => ResetDirtyRingsCore();

    /// <summary>A vCPU exited with KVM_EXIT_DIRTY_RING_FULL: harvest every ring into the backlog and reset, then the vCPU may resume.</summary>
    private protected void OnDirtyRingFull(int vcpu)
        => (DirtyRing ?? throw new InvalidOperationException($"vCPU {vcpu} reported a full dirty ring but the ring is not enabled")).OnFull();
}
