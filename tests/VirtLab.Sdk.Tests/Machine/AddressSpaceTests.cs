using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

public class AddressSpaceTests
{
    static Vm Sim(Size? memory = null) => Vm.Create(new VmOptions(memory ?? 4.MiB()) { Backend = Backend.Sim });

    [Fact]
    public void Guest_physical_space_reads_writes_and_faults()
    {
        using var vm = Sim();
        var gpa = vm.PhysicalSpace;
        Assert.Same(gpa, vm.PhysicalSpace);
        var at = vm.TestSlot.Gpa + 0x100;
        gpa.Write(at, 0xdeadbeefUL);
        Assert.Equal(0xdeadbeefUL, vm.Memory.Read<ulong>(at));
        Assert.Equal(at, gpa.Translate(at));

        var end = vm.TestSlot.EndGpa;
        Assert.False(gpa.TryRead<ulong>(end - 4, out _, out var f));
        Assert.Equal(new MemoryFault(gpa, end, end - 4, 8, MemoryAccess.Read, MemoryFaultReason.Unmapped), f);
        Assert.Equal(Errno.EFAULT, f.Errno);
        Assert.Contains($"0x{end:x} is not mapped in gpa", f.ToString());
        var ex = Assert.Throws<MemoryFaultException>(() => gpa.Read<ulong>(end - 4));
        Assert.Equal(f, ex.Fault);

        // A faulting write writes nothing, not even the mapped part.
        gpa.Write(end - 4, 0x01020304u);
        Assert.False(gpa.TryWrite(end - 4, new byte[8], out _));
        Assert.Equal(0x01020304u, gpa.Read<uint>(end - 4));

        Assert.False(gpa.TryCheck(ulong.MaxValue - 1, 4, MemoryAccess.Read, out var wrap));
        Assert.Equal(MemoryFaultReason.Overflow, wrap.Reason);
        Assert.True(gpa.Faults >= 3);
    }

    [Fact]
    public void Accesses_span_adjacent_memslots()
    {
        using var vm = Sim();
        var a = vm.AddSlot(64.KiB(), gpa: 0x4000_0000);
        var b = vm.AddSlot(64.KiB(), gpa: 0x4001_0000);
        var data = Enumerable.Range(0, 256).Select(i => (byte)i).ToArray();
        var at = a.EndGpa - 100;
        vm.PhysicalSpace.Write(at, data);
        Assert.Equal(data.AsSpan(0, 100).ToArray(), vm.Memory.Span(at, 100).ToArray());
        Assert.Equal(data.AsSpan(100).ToArray(), vm.Memory.Span(b.Gpa, 156).ToArray());
        Assert.Equal(data, vm.PhysicalSpace.ReadBytes(at, 256));
        Assert.Equal(0x6463u, vm.PhysicalSpace.Read<ushort>(a.EndGpa - 1)); // a u16 across the boundary
        // One host span cannot cover both slots: TryGetSpan says so without a fault.
        Assert.False(vm.PhysicalSpace.TryGetSpan(at, 256, MemoryAccess.Read, out _, out var f));
        Assert.Null(f.Space);
        Assert.True(vm.PhysicalSpace.TryGetSpan(at, 100, MemoryAccess.Read, out var span, out _));
        Assert.Equal(100, span.Length);
    }

    [Fact]
    public void Disposed_vm_faults_instead_of_throwing()
    {
        var vm = Sim();
        var space = vm.PhysicalSpace;
        var at = vm.TestSlot.Gpa;
        vm.Dispose();
        Assert.False(space.TryRead<int>(at, out _, out var f));
        Assert.Equal(MemoryFaultReason.Disposed, f.Reason);
    }

    [Fact]
    public void Slot_changes_change_the_generation()
    {
        using var vm = Sim();
        var g0 = vm.PhysicalSpace.Generation;
        Assert.Equal(g0, vm.PhysicalSpace.Generation);
        var s = vm.AddSlot(64.KiB(), gpa: 0x4000_0000);
        var g1 = vm.PhysicalSpace.Generation;
        Assert.NotEqual(g0, g1);
        var iova = new IovaSpace(vm.PhysicalSpace, "iotlb");
        var i0 = iova.Generation;
        iova.Map(0, 4096, s.Gpa);
        Assert.NotEqual(i0, iova.Generation);
        var i1 = iova.Generation;
        vm.RemoveSlot(s.Id);
        Assert.NotEqual(i1, iova.Generation); // a change below shows through
        Assert.False(iova.TryRead<int>(0, out _, out var f));
        Assert.Same(vm.PhysicalSpace, f.Space); // the IOVA mapping is there; the gpa behind it is not
        Assert.Equal(s.Gpa, f.Address);
    }

    [Fact]
    public void Host_address_to_gpa()
    {
        using var vm = Sim();
        var slot = vm.TestSlot;
        Assert.True(vm.PhysicalSpace.TryGpaOfHostAddress((ulong)slot.HostAddress + 0x1234, out var gpa));
        Assert.Equal(slot.Gpa + 0x1234, gpa);
        Assert.False(vm.PhysicalSpace.TryGpaOfHostAddress(8, out _));
    }

    [Fact]
    public void Iova_mappings_translate_with_permissions()
    {
        using var vm = Sim();
        var g = vm.TestSlot.Gpa;
        var s = new IovaSpace(vm.PhysicalSpace, "vdpa0 IOTLB");
        s.Map(0x10000, 0x1000, g, MemoryAccess.Read);
        s.Map(0x11000, 0x1000, g + 0x8000, MemoryAccess.Write);
        s.Map(0x20000, 0x2000, g + 0x2000, MemoryAccess.ReadWrite);
        Assert.Equal(g + 0x10, s.Translate(0x10010));
        Assert.True(s.TryTranslate(0x10ff0, 0x100, MemoryAccess.Read, out var t, out var n, out _));
        Assert.Equal((g + 0xff0, 0x10L), (t, n)); // contiguous to the end of the mapping

        Assert.False(s.TryWrite(0x10000, 1, out var f));
        Assert.Equal((MemoryFaultReason.Permission, MemoryAccess.Write, Errno.EPERM), (f.Reason, f.Access, f.Errno));
        Assert.Contains("does not allow write", f.ToString());
        Assert.False(s.TryRead<byte>(0x11000, out _, out f));
        Assert.Equal(MemoryFaultReason.Permission, f.Reason);
        Assert.False(s.TryRead<byte>(0x12000, out _, out f));
        Assert.Equal((MemoryFaultReason.Unmapped, 0x12000UL), (f.Reason, f.Address));
        Assert.Same(s, f.Space);

        // Spanning the RO and WO mappings: a read fails at the WO one's first byte.
        Assert.False(s.TryCheck(0x10ff8, 16, MemoryAccess.Read, out f));
        Assert.Equal(0x11000UL, f.Address);

        // Data lands where the mapping points.
        s.Write(0x20010, 0x55aa55aaU);
        Assert.Equal(0x55aa55aaU, vm.Memory.Read<uint>(g + 0x2010));
    }

    [Fact]
    public void Iova_reads_span_mappings_to_scattered_gpas()
    {
        using var vm = Sim();
        var g = vm.TestSlot.Gpa;
        var s = new IovaSpace(vm.PhysicalSpace, "container");
        for (int i = 0; i < 8; i++) s.Map(0x100000 + (ulong)i * 4096, 4096, g + (ulong)(7 - i) * 4096 * 2); // reversed, with gaps
        var data = Enumerable.Range(0, 8 * 4096).Select(i => (byte)(i * 13)).ToArray();
        s.Write(0x100000, data);
        Assert.Equal(data, s.ReadBytes(0x100000, data.Length));
        Assert.Equal(data.AsSpan(4096, 4096).ToArray(), vm.Memory.Span(g + 6 * 4096 * 2, 4096).ToArray());
        Assert.Equal(BitConverter.ToUInt64(data, 4092), s.Read<ulong>(0x100000 + 4092));
    }

    [Fact]
    public void Overlaps_are_found_and_refused()
    {
        using var vm = Sim();
        var s = new IovaSpace(vm.PhysicalSpace, "iotlb", first: 0x1000, last: 0xffff_ffff);
        Assert.True(s.TryMap(0x10000, 0x1000, 0, MemoryAccess.ReadWrite));
        Assert.True(s.TryMap(0x12000, 0x1000, 0, MemoryAccess.ReadWrite));
        Assert.False(s.TryMap(0x10fff, 2, 0, MemoryAccess.Read));
        Assert.False(s.TryMap(0x8000, 0x20000, 0, MemoryAccess.Read));
        Assert.True(s.TryMap(0x11000, 0x1000, 0, MemoryAccess.Read)); // exactly the gap
        Assert.Equal([0x10000UL, 0x11000UL, 0x12000UL], s.FindOverlapping(0x10800, 0x2000).Select(m => m.Iova));
        Assert.True(s.Overlaps(0x12fff, 1));
        Assert.False(s.Overlaps(0x13000, 0x1000));
        Assert.Contains("EEXIST", Assert.Throws<InvalidOperationException>(() => s.Map(0x10000, 1, 0)).Message);
        Assert.Equal(0x11000UL, s.Find(0x11abc)!.Value.Iova);
        Assert.Null(s.Find(0x13000));

        Assert.Throws<ArgumentException>(() => s.TryMap(0x20000, 0, 0, MemoryAccess.Read));
        Assert.Throws<ArgumentException>(() => s.TryMap(ulong.MaxValue - 2, 8, 0, MemoryAccess.Read));
        Assert.Contains("outside iotlb's range", Assert.Throws<ArgumentOutOfRangeException>(() => s.TryMap(0, 0x1000, 0, MemoryAccess.Read)).Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => s.TryMap(0xffff_f000, 0x2000, 0, MemoryAccess.Read));

        // del_range removes whole entries touching the range; Remove needs the exact range.
        Assert.False(s.Remove(0x10000, 0x800));
        Assert.Equal([0x10000UL, 0x11000UL], s.RemoveOverlapping(0x10fff, 2).Select(m => m.Iova));
        Assert.True(s.Remove(0x12000, 0x1000));
        Assert.Equal(0, s.Count);
    }

    [Fact]
    public void Batches_publish_at_the_end()
    {
        using var vm = Sim();
        var s = new IovaSpace(vm.PhysicalSpace, "iotlb");
        var g = s.Generation;
        using (s.BeginBatch())
        {
            s.Map(0, 4096, vm.TestSlot.Gpa);
            s.Map(4096, 4096, vm.TestSlot.Gpa);
            Assert.Equal(0, s.Count);
            Assert.False(s.TryRead<int>(0, out _, out _));
            Assert.False(s.TryMap(100, 1, 0, MemoryAccess.Read)); // overlaps are checked against the batch
        }
        Assert.Equal(2, s.Count);
        Assert.Equal(g + 1, s.Generation);
        Assert.True(s.TryRead<int>(4096, out _, out _));
    }

    /// <summary>A device thread translates while another thread maps and unmaps: every lookup is right for some published table.</summary>
    [Fact]
    public void Translation_is_safe_while_mappings_change()
    {
        using var vm = Sim(8.MiB());
        var g = vm.TestSlot.Gpa;
        var s = new IovaSpace(vm.PhysicalSpace, "iotlb");
        for (int i = 0; i < 64; i++) s.Map((ulong)i << 16, 4096, g + (ulong)i * 4096); // stable ones
        // The moving mapping at 0x100_0000 points at page A or page B, or is absent.
        ulong pageA = g + 0x10_0000, pageB = g + 0x20_0000;
        const int changes = 20_000;
        long bad = 0, hits = 0, misses = 0;
        var stop = 0;
        using var reading = new ManualResetEventSlim();
        var reader = Task.Factory.StartNew(() =>
        {
            var rnd = new Random(1);
            while (Volatile.Read(ref stop) == 0)
            {
                reading.Set(); // the writer starts once lookups run, so they overlap the changes
                var i = rnd.Next(64);
                if (!s.TryTranslate(((ulong)i << 16) + 8, 8, MemoryAccess.Read, out var t, out _, out _) || t != g + (ulong)i * 4096 + 8) bad++;
                if (s.TryTranslate(0x100_0010, 8, MemoryAccess.Write, out t, out var n, out var f))
                {
                    hits++;
                    if ((t != pageA + 0x10 && t != pageB + 0x10) || n != 8) bad++;
                }
                else if (f.Reason != MemoryFaultReason.Unmapped || f.Address != 0x100_0010) bad++;
                else misses++;
            }
        }, TaskCreationOptions.LongRunning);
        Assert.True(reading.Wait(TimeSpan.FromSeconds(30)), "the reader thread never started");
        for (int k = 0; k < changes; k++)
        {
            s.Map(0x100_0000, 4096, k % 2 == 0 ? pageA : pageB);
            Assert.Equal(k % 2 == 0 ? pageA : pageB, s.Translate(0x100_0000)); // visible once Map returns
            Assert.Single(s.RemoveOverlapping(0x100_0000, 1));
            Assert.False(s.TryTranslate(0x100_0000, 1, MemoryAccess.Read, out _, out _, out _)); // gone once it returns
        }
        Volatile.Write(ref stop, 1);
        reader.Wait();
        Assert.Equal(0, bad);
        Assert.True(hits + misses > 0);
    }
}
