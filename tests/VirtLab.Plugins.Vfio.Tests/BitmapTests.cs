using VirtLab.Plugins.Vfio.Devices;
using VirtLab.Plugins.Vfio.Tracking;
using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Plugins.Vfio.Uapi;
using Xunit;
using static VirtLab.Sdk.Native.Errno;
using U = VirtLab.Plugins.Vfio.Uapi.VfioUapi;

namespace VirtLab.Plugins.Vfio.Tests;

/// <summary>What GET_BITMAP reports: merging of unaligned mappings, pinned pages, passthrough groups, unmap with bitmap.</summary>
public class BitmapTests
{
    const ulong P = Fx.Page;

    // pages: A [0,3) B [3,73) hole [73,80) C [80,85) hole D [128,192) hole E [200,203)
    static readonly (ulong First, ulong Pages)[] Layout = [(0, 3), (3, 70), (80, 5), (128, 64), (200, 3)];

    static VfioContainer Unaligned(bool clearTail)
    {
        var c = Fx.Mdev();
        c.ClearShiftedTail = clearTail;
        foreach (var (f, n) in Layout) Assert.Equal(0, Fx.Map(c, f * P, n * P));
        Assert.Equal(0, Fx.Start(c));
        return c;
    }

    static long[] Report(VfioContainer c, UserBuffer buf, ulong pages = 256)
    {
        buf.Clear();   // QEMU hands the kernel a zeroed bitmap each time
        Assert.Equal(0, Fx.Get(c, 0, pages * P, buf));
        return Fx.SetPages(buf.Words);
    }

    [Fact]
    public void A_range_over_several_unaligned_mappings_reports_each_page_at_its_offset_and_holes_stay_zero()
    {
        using var c = Unaligned(clearTail: true);
        using var buf = c.User.Allocate(32);
        long[] dirty = [0, 2, 3, 4, 63, 64, 65, 72, 80, 84, 128, 191, 200, 202];
        foreach (var p in dirty) c.RecordDeviceWrite((ulong)p * P, 100, DmaPath.CpuCopy);
        Assert.Equal(dirty, Report(c, buf));
        Assert.Empty(Report(c, buf));                       // reported once, then cleared
        c.RecordDeviceWrite(64 * P + 8, 2 * P, DmaPath.CpuCopy);   // a write across three pages marks all three
        Assert.Equal([64L, 65, 66], Report(c, buf));
    }

    [Fact]
    public void A_shifted_mapping_ors_in_the_whole_word_the_caller_left_so_the_bitmap_must_be_zeroed()
    {
        using var c = Fx.Mdev();
        c.ClearShiftedTail = true;
        Assert.Equal(0, Fx.Map(c, 3 * P, 70 * P));         // the first mapping of the range starts at bit 3
        c.StartDirtyTracking();
        using var buf = c.User.Allocate(16);
        c.RecordDeviceWrite(10 * P, P, DmaPath.CpuCopy);
        buf.Words[0] = (1UL << 1) | (1UL << 5);           // stale bits: one in the hole, one inside the mapping
        Assert.Equal(0, Fx.Get(c, 0, 73 * P, buf));
        Assert.Equal((1UL << 1) | (1UL << 5) | (1UL << 10), buf.Words[0]);   // bitmap_or over the leftover word keeps both
    }

    [Fact]
    public void The_kernel_leaves_a_shifted_tail_that_later_reports_carry_past_the_mapping_end()
    {
        using var c = Unaligned(clearTail: false);
        using var buf = c.User.Allocate(32);
        foreach (var p in new ulong[] { 70, 71, 72 }) c.RecordDeviceWrite(p * P, P, DmaPath.CpuCopy);   // B's last 3 pages
        Assert.Equal([70L, 71, 72], Report(c, buf));
        // Round 1 left two things behind. B (70 pages, shifted by 3) keeps bits 70..72 of its shifted map:
        // bitmap_clear(map, 0, nbits) stops at 70. C (5 pages, shifted by 16) ORed in the user's word, which held B's
        // pages 70..72 at bits 6..8, and keeps every bit of it at or above its 5 pages. Each later report shifts
        // those again: B's land on 73..75 (the hole after B), C's on 86..88 (the hole after C) — and they compound.
        Assert.Equal([73L, 74, 75, 86, 87, 88], Report(c, buf));
        Assert.Equal([76L, 77, 78, 89, 90, 91, 102, 103, 104], Report(c, buf));
    }

    [Fact]
    public void Querying_each_mapping_on_its_own_never_shifts_so_the_tail_never_appears()
    {
        using var c = Unaligned(clearTail: false);
        using var buf = c.User.Allocate(32);
        foreach (var p in new ulong[] { 70, 71, 72 }) c.RecordDeviceWrite(p * P, P, DmaPath.CpuCopy);
        buf.Clear();
        Assert.Equal(0, Fx.Get(c, 3 * P, 70 * P, buf));
        Assert.Equal([67L, 68, 69], Fx.SetPages(buf.Words));
        buf.Clear();
        Assert.Equal(0, Fx.Get(c, 3 * P, 70 * P, buf));
        Assert.Empty(Fx.SetPages(buf.Words));
    }

    [Fact]
    public void Pinned_pages_are_reported_every_round_until_unpinned()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Mdev(vm);
        var mdev = vm.Attach(new MediatedDevice(c) { KeepPinned = true });
        c.MapGuestRam(0, vm.TestSlot.Gpa, 64 * P);
        c.StartDirtyTracking();
        Assert.True(mdev.Write(5 * P + 16, new byte[64]));
        Assert.Equal(1, c.PinnedPages);
        for (var round = 0; round < 3; round++) Assert.Equal([5L], c.GetDirtyBitmap(0, 64 * P).ToArray());
        mdev.UnpinAll();
        Assert.Equal([5L], c.GetDirtyBitmap(0, 64 * P).ToArray());   // refilled at the last report, before the unpin
        Assert.Empty(c.GetDirtyBitmap(0, 64 * P).ToArray());
    }

    [Fact]
    public void Pages_pinned_before_START_start_dirty()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Mdev(vm);
        var mdev = vm.Attach(new MediatedDevice(c) { KeepPinned = true });
        c.MapGuestRam(0, vm.TestSlot.Gpa, 64 * P);
        Assert.True(mdev.Write(9 * P, new byte[8]));
        c.StartDirtyTracking();
        Assert.Equal([9L], c.GetDirtyBitmap(0, 64 * P).ToArray());
    }

    [Fact]
    public void A_passthrough_group_that_does_not_pin_makes_every_mapped_page_dirty_every_round()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Passthrough(vm);
        var dev = vm.Attach(new PassthroughDevice(c, group: c.Groups[0]));
        c.MapGuestRam(0, vm.TestSlot.Gpa, 40 * P);
        c.MapGuestRam(100 * P, vm.TestSlot.Gpa + 40 * P, 3 * P);
        c.StartDirtyTracking();
        Assert.True(dev.Write(2 * P, new byte[16]));
        var all = Enumerable.Range(0, 40).Select(i => (long)i).Concat([100L, 101, 102]).ToArray();
        for (var round = 0; round < 2; round++) Assert.Equal(all, c.GetDirtyBitmap(0, 128 * P).ToArray());
        Assert.Equal(1, c.NonPinnedGroups);

        // the group pins a page: it joins the pinned-page scope and only pinned pages report from then on
        c.PinPages(dev, 7 * P, 1, DmaProt.Write);
        Assert.Equal(0, c.NonPinnedGroups);
        Assert.Equal([7L], c.GetDirtyBitmap(0, 128 * P).ToArray());
    }

    [Fact]
    public void Unmap_with_GET_DIRTY_BITMAP_returns_the_bits_of_the_unmapped_range()
    {
        using var c = Unaligned(clearTail: true);
        using var buf = c.User.Allocate(16);
        c.RecordDeviceWrite(4 * P, P, DmaPath.CpuCopy);
        c.RecordDeviceWrite(82 * P, P, DmaPath.CpuCopy);
        var arg = U.DmaUnmap(3 * P, 82 * P, U.DmaUnmapFlagGetDirtyBitmap, new VfioBitmap(P, 16, buf.Address));
        Assert.Equal(0, c.Ioctl(U.IommuUnmapDma, arg));
        Assert.Equal(75 * P, U.Get64(arg, 16));             // B and C
        Assert.Equal([1L, 79], Fx.SetPages(buf.Words));     // pages from iova 3*P
        Assert.Equal(3, c.Dmas.Count);
    }

    [Fact]
    public void Dma_rw_writes_guest_memory_through_the_iova_space_and_marks_exactly_the_pages_touched()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Mdev(vm);
        var mdev = vm.Attach(new MediatedDevice(c) { UseDmaRw = true });
        c.MapGuestRam(0x10_0000, vm.TestSlot.Gpa + 8 * P, 16 * P);
        c.MapDma(0x80_0000, c.User.VaddrOf(vm.TestSlot.Gpa), P, DmaProt.Read);
        c.StartDirtyTracking();
        var data = Enumerable.Range(0, 5000).Select(i => (byte)i).ToArray();
        Assert.True(mdev.Write(0x10_0000 + 3 * P + 100, data));
        var back = new byte[5000];
        vm.Memory.Read(vm.TestSlot.Gpa + 11 * P + 100, back);
        Assert.Equal(data, back);
        Assert.Equal([3L, 4], c.GetDirtyBitmap(0x10_0000, 16 * P).ToArray());
        Assert.False(mdev.Write(0x80_0000, new byte[8]));   // read-only mapping: EPERM, counted
        Assert.Equal(1, mdev.Faults);
        Assert.Contains("does not allow writes", mdev.LastFault);
        var e = Assert.Throws<VfioException>(() => c.DmaRw(0x90_0000, new byte[8], write: true));
        Assert.Equal(EINVAL, e.Errno);
    }

    [Fact]
    public void A_passthrough_device_reaches_guest_memory_only_through_mapped_iova()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Passthrough(vm);
        var dev = vm.Attach(new PassthroughDevice(c, group: c.Groups[0]));
        c.MapGuestRam(0, vm.TestSlot.Gpa, 4 * P);
        Assert.True(dev.Write(P, [1, 2, 3, 4, 5, 6, 7, 8]));
        Assert.Equal(0x0807060504030201UL, vm.Memory.Read<ulong>(vm.TestSlot.Gpa + P));
        Assert.False(dev.Write(4 * P, new byte[8]));         // past the mapping: a counted fault, nothing written
        Assert.False(dev.Write(4 * P - 4, new byte[8]));     // straddles the end
        Assert.Equal(2, dev.Faults);
        Assert.Equal(0UL, vm.Memory.Read<ulong>(vm.TestSlot.Gpa + 4 * P));
        c.UnmapDma(0, 4 * P);
        Assert.False(dev.Write(P, new byte[8]));             // unmapped: the IOVA space has no translation left
    }

    [Fact]
    public void Unmapping_pinned_pages_asks_the_device_to_unpin_them()
    {
        using var vm = Fx.SimVm();
        using var c = Fx.Mdev(vm);
        var mdev = vm.Attach(new MediatedDevice(c) { KeepPinned = true });
        c.MapGuestRam(0, vm.TestSlot.Gpa, 8 * P);
        Assert.True(mdev.Write(P, new byte[8]));
        Assert.Equal(1, mdev.PinnedPages);
        Assert.Equal(8 * P, c.UnmapDma(0, 8 * P));
        Assert.Equal(0, mdev.PinnedPages);
        Assert.Empty(c.Dmas);
    }
}
