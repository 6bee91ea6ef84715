using Iced.Intel;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Native;
using Xunit;
using static Iced.Intel.AssemblerRegisters;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>The raw KVM dirty-log primitives, driven by guest writes, without the Machine layer.</summary>
[Collection("KVM")]
public unsafe class KvmDirtyLogPrimitiveTests
{
    private const uint Slot = 1;
    private const int Pages = 128;
    private const int BigPages = 240;
    private const ulong Gpa = 1ul << 32;

    private sealed class Rig : IDisposable
    {
        private readonly KvmRig _rig;
        public KvmMachine M => _rig.M;

        public Rig(int vcpus = 1, int ringBytes = 0, bool manual = false, bool initiallySet = false, int pages = Pages)
        {
            _rig = new KvmRig(vcpus, ringBytes, manual, initiallySet);
            _rig.AddSlot(Slot, Gpa, (ulong)pages * 4096, KvmConst.KVM_MEM_LOG_DIRTY_PAGES);
            M.PrepareLayout();
        }

        public void Touch(IEnumerable<int> pages, bool write, bool syncAfter = false)
        {
            var gvas = pages.Select(p => M.GvaOf(Gpa + (ulong)p * 4096)).ToArray();
            _rig.Run(a =>
            {
                foreach (var g in gvas)
                {
                    a.mov(rax, g);
                    if (write) a.mov(__qword_ptr[rax], rdi); else a.mov(rbx, __qword_ptr[rax]);
                }
                if (syncAfter) a.UcallSync();
                a.UcallDone();
            });
        }

        public int[] GetLog()
        {
            var bm = new ulong[(Pages + 63) / 64];
            fixed (ulong* p = bm) M.GetDirtyLog(Slot, p);
            return SetBits(bm);
        }

        public void Clear(int first, int count, ulong[] bits)
        {
            fixed (ulong* p = bits) M.ClearDirtyLog(Slot, (ulong)first, (uint)count, p);
        }

        public List<(uint Slot, ulong Offset)> HarvestAllRings() => _rig.HarvestAllRings();

        public void Dispose() => _rig.Dispose();
    }

    private static int[] SetBits(ulong[] bm) =>
        Enumerable.Range(0, bm.Length * 64).Where(i => (bm[i / 64] >> (i % 64) & 1) != 0).ToArray();

    [KvmFact]
    public void Get_dirty_log_reports_exactly_the_written_pages_and_reprotects()
    {
        using var r = new Rig();
        r.GetLog(); // drop whatever the first population dirtied
        int[] pages = { 0, 3, 17, 63, 64, 127 };
        r.Touch(pages, write: true);
        Assert.Equal(pages, r.GetLog());
        Assert.Empty(r.GetLog()); // legacy GET re-protects and clears
        r.Touch(Enumerable.Range(0, Pages), write: false);
        Assert.Empty(r.GetLog());
        r.Touch(new[] { 5 }, write: true);
        Assert.Equal(new[] { 5 }, r.GetLog());
    }

    [KvmFact]
    public void Manual_protect_get_does_not_reprotect_clear_does()
    {
        using var r = new Rig(manual: true);
        int[] pages = { 1, 2, 70, 100 };
        r.Touch(pages, write: true);
        Assert.Equal(pages, r.GetLog());
        Assert.Equal(pages, r.GetLog()); // still set: GET does not clear with manual protect
        r.Clear(64, 64, new[] { ~0ul }); // clear the second 64-page chunk only
        Assert.Equal(new[] { 1, 2 }, r.GetLog());
        r.Clear(0, 64, new[] { ~0ul });
        Assert.Empty(r.GetLog());
        r.Touch(new[] { 2, 100 }, write: true);
        Assert.Equal(new[] { 2, 100 }, r.GetLog());
    }

    [KvmFact]
    public void Initially_set_reports_every_page_at_first()
    {
        using var r = new Rig(manual: true, initiallySet: true);
        Assert.Equal(Enumerable.Range(0, Pages), r.GetLog());
        r.Clear(0, Pages, new[] { ~0ul, ~0ul });
        Assert.Empty(r.GetLog());
        r.Touch(new[] { 9 }, write: true);
        Assert.Equal(new[] { 9 }, r.GetLog());
    }

    [KvmFact]
    public void Dirty_ring_harvest_returns_the_written_pages_and_survives_ring_full()
    {
        // 4 KiB ring = 256 entries; KVM exits with DIRTY_RING_FULL at its soft limit (256 - 64 reserved).
        using var r = new Rig(ringBytes: 4096);
        r.Touch(Enumerable.Range(0, Pages), write: true);
        var got = r.HarvestAllRings();
        Assert.Equal(Enumerable.Range(0, Pages).Select(i => (Slot, (ulong)i)), got.Distinct().OrderBy(x => x.Offset));

        int[] pages = { 7, 8, 99 };
        r.Touch(pages, write: true);
        Assert.Equal(pages.Select(i => (Slot, (ulong)i)), r.HarvestAllRings().OrderBy(x => x.Offset));
    }

    [KvmFact]
    public void Ring_full_exit_is_handled_with_a_small_ring()
    {
        // 240 distinct pages dirtied in one run pass a 256-entry ring's soft limit (256 - 64 reserved) once.
        // Not more: under PVM the instruction emulator keeps pushing entries without re-checking the soft-full
        // request, so more than 64 pushes past the soft limit overflow the ring (kernel WARN, entries lost).
        using var r = new Rig(ringBytes: 4096, pages: BigPages);
        r.HarvestAllRings();
        r.Touch(Enumerable.Range(0, BigPages), write: true, syncAfter: true); // re-entry after the sync sees the soft-full request
        Assert.True(r.M.DirtyRingFullExits >= 1, $"{r.M.DirtyRingFullExits} ring-full exits");
        var set = r.HarvestAllRings().ToHashSet();
        Assert.Equal(Enumerable.Range(0, BigPages).Select(i => (Slot, (ulong)i)), set.OrderBy(x => x.Offset)); // exactly the written pages
    }
}
