using System.Buffers.Binary;
using FsCheck;
using FsCheck.Fluent;
using VirtLab.Plugins.Vdpa;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;
using VirtLab.Sdk.Virtio;
using Xunit;
using static VirtLab.Plugins.Vdpa.Uapi.VirtioConfig;
using VirtLab.Tests;

namespace VirtLab.Plugins.Vdpa.Tests;

/// <summary>
/// A net (or block) device driven by hand: the test writes ring bytes itself (a hostile driver) and runs the device's
/// worker pass on its own thread. Layout in the VM's test slot (IOVA = gpa):
/// [G, G+1 MiB) mapped RW (rings at G and G+0x2000, RX buffers at G+0x10000, TX buffers at G+0x20000);
/// [G+1 MiB, +64 KiB) mapped RO (0x5A bytes); [G+2 MiB, +64 KiB) not mapped: a canary the device must never touch.
/// </summary>
public sealed class Rig : IDisposable
{
    public const int Q = 16;
    public static readonly byte[] CanaryPattern = "CANARY-0SECRET!!"u8.ToArray();
    public readonly Vm Vm = Vm.Create(8.MiB(), backend: Backend.Sim);
    public readonly VdpaDevice Dev;
    public readonly VhostVdpa V;
    public readonly ulong G;
    public ulong Rw => G;
    public ulong Ro => G + 0x100000;
    public ulong Canary => G + 0x200000;
    public ulong TxBuf => G + 0x20000;
    public ulong RxBuf => G + 0x10000;

    public Rig(bool block = false)
    {
        Dev = block ? new VdpaBlockDevice(capacityBytes: 1 << 20) { ManualWorker = true } : new VdpaNetDevice { ManualWorker = true };
        V = new VhostVdpa(Dev, Vm, new EventFdTable().Resolve);
        G = Vm.TestSlot.Gpa;
        V.SetOwner();
        V.SetBackendFeatures(1UL << Vhost.VHOST_BACKEND_F_IOTLB_MSG_V2 | 1UL << Vhost.VHOST_BACKEND_F_IOTLB_BATCH | 1UL << Vhost.VHOST_BACKEND_F_IOTLB_PERSIST);
        V.BatchBegin();
        V.Map(Rw, 0x100000, Rw);
        V.Map(Ro, 0x10000, Ro, Vhost.VHOST_ACCESS_RO);
        V.BatchEnd();
        Vm.Memory.Fill(Ro, 0x10000, 0x5A);
        for (int i = 0; i < 0x10000; i += 16) Vm.Memory.Write(Canary + (ulong)i, CanaryPattern);
    }

    public SplitRing Ring(int q) => SplitRing.Contiguous(G + (ulong)q * 0x2000, Q);

    /// <summary>Reset, negotiate, program every queue, DRIVER_OK. Rings are zeroed.</summary>
    public void Start(bool indirect = true, bool eventIdx = false)
    {
        V.Reset();
        Vm.Memory.Fill(G, 0x10000, 0);
        V.SetStatus(ACKNOWLEDGE | DRIVER);
        V.SetFeatures(Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM) | (indirect ? Bit(RING_F_INDIRECT_DESC) : 0) | (eventIdx ? Bit(RING_F_EVENT_IDX) : 0));
        V.AddStatus(FEATURES_OK);
        for (uint q = 0; q < Dev.Nvqs; q++)
        {
            var r = Ring((int)q);
            V.SetVringNum(q, Q);
            V.SetVringAddr(q, r.DescAddress, r.AvailAddress, r.UsedAddress);
            V.SetVringBase(q, 0);
            V.SetVringEnable(q, true);
        }
        V.AddStatus(DRIVER_OK);
    }

    public void Desc(int q, int i, ulong addr, uint len, ushort flags, ushort next)
    {
        var d = Vm.Memory.Span(Ring(q).DescAddress + (ulong)(16 * i), 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    /// <summary>Writes an indirect table entry at <paramref name="table"/> (a gpa in the RW window).</summary>
    public void TableEntry(ulong table, int i, ulong addr, uint len, ushort flags, ushort next)
    {
        var d = Vm.Memory.Span(table + (ulong)(16 * i), 16);
        BinaryPrimitives.WriteUInt64LittleEndian(d, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(d[8..], len);
        BinaryPrimitives.WriteUInt16LittleEndian(d[12..], flags);
        BinaryPrimitives.WriteUInt16LittleEndian(d[14..], next);
    }

    public void Avail(int q, ushort idx, params ushort[] heads)
    {
        var r = Ring(q);
        for (int i = 0; i < heads.Length; i++) Vm.Memory.Write(r.AvailAddress + 4 + (ulong)(2 * (i % Q)), heads[i]);
        Vm.Memory.Write(r.AvailAddress + 2, idx);
    }

    /// <summary>RX queue 0: Q good receive buffers.</summary>
    public void GoodRx()
    {
        for (int i = 0; i < Q; i++) Desc(0, i, RxBuf + (ulong)(i * 2048), 2048, VirtqConst.DescFWrite, 0);
        Avail(0, Q, Enumerable.Range(0, Q).Select(i => (ushort)i).ToArray());
    }

    public ushort UsedIdx(int q) => Vm.Memory.Read<ushort>(Ring(q).UsedAddress + 2);
    public bool NeedsReset => (Dev.GetStatus() & NEEDS_RESET) != 0;

    /// <summary>The device never wrote the canary or the RO window, and no canary byte reached mapped memory.</summary>
    public void AssertNoStrayAccess()
    {
        var canary = Vm.Memory.Span(Canary, 0x10000);
        for (int i = 0; i < canary.Length; i += 16) Assert.True(canary.Slice(i, 16).SequenceEqual(CanaryPattern), $"canary changed at +0x{i:x}");
        Assert.True(Vm.Memory.Span(Ro, 0x10000).IndexOfAnyExcept((byte)0x5A) < 0, "the device wrote into a read-only mapping");
        Assert.True(Vm.Memory.Span(Rw, 0x100000).IndexOf(CanaryPattern.AsSpan(0, 8)) < 0, "canary bytes reached mapped memory");
        Assert.DoesNotContain(Dev.Counters.Errors.Keys, k => k.StartsWith("device:"));   // no exception escaped the device
    }

    public void Dispose()
    {
        Dev.Dispose();
        Vm.Dispose();
    }
}

public class HostileRingTests
{
    const ushort N = VirtqConst.DescFNext, W = VirtqConst.DescFWrite, I = VirtqConst.DescFIndirect;

    static void Expect(Rig r, string kindPrefix)
    {
        Assert.True(r.NeedsReset, "NEEDS_RESET is set");
        Assert.Contains(r.Dev.Counters.Errors.Keys, k => k.StartsWith(kindPrefix));
        r.AssertNoStrayAccess();
    }

    [Fact]
    public void Descriptor_loop()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        r.Desc(1, 0, r.TxBuf, 64, N, 1);
        r.Desc(1, 1, r.TxBuf, 64, N, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "vq1: ChainTooLong");
    }

    [Fact]
    public void Chain_longer_than_the_queue_in_an_indirect_table()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        ulong table = r.TxBuf + 0x1000;
        for (int i = 0; i < Rig.Q + 4; i++) r.TableEntry(table, i, r.TxBuf, 8, N, (ushort)((i + 1) % (Rig.Q + 4)));
        r.Desc(1, 0, table, (uint)(16 * (Rig.Q + 4)), I, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Assert.True(r.NeedsReset);
        Assert.Contains(r.Dev.Counters.Errors.Keys, k => k.StartsWith("vq1: "));
        r.AssertNoStrayAccess();
    }

    [Fact]
    public void Buffer_outside_the_IOTLB()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        r.Desc(1, 0, r.Canary, 64, 0, 0);         // IOVA of the canary: not mapped
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "vq1: BufferFault");
        Assert.Equal(0, r.UsedIdx(0));             // nothing was received
    }

    [Fact]
    public void Buffer_running_past_the_end_of_a_mapping()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        r.Desc(1, 0, r.Ro + 0xff00, 0x200, 0, 0);  // starts in the RO window, ends in the hole after it
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "vq1: BufferFault");
    }

    [Fact]
    public void Receive_buffer_in_a_read_only_mapping()
    {
        using var r = new Rig();
        r.Start();
        r.Desc(0, 0, r.Ro, 2048, W, 0);            // the device must write here, the IOTLB says read-only
        r.Avail(0, 1, 0);
        r.Desc(1, 0, r.TxBuf, 64, 0, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "vq0: BufferFault");
    }

    [Fact]
    public void Transmit_buffer_in_a_read_only_mapping_is_fine()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        r.Desc(1, 0, r.Ro, 64, 0, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Assert.False(r.NeedsReset);
        Assert.Equal(1, r.UsedIdx(0));
        Assert.True(r.Vm.Memory.Span(r.RxBuf, 64).IndexOfAnyExcept((byte)0x5A) < 0);
    }

    [Fact]
    public void Nested_indirect()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        ulong outer = r.TxBuf + 0x1000, inner = r.TxBuf + 0x2000;
        r.TableEntry(inner, 0, r.TxBuf, 64, 0, 0);
        r.TableEntry(outer, 0, inner, 16, I, 0);
        r.Desc(1, 0, outer, 16, I, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "vq1: NestedIndirect");
    }

    [Fact]
    public void Avail_index_jumping_more_than_the_queue_size()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        r.Desc(1, 0, r.TxBuf, 64, 0, 0);
        r.Avail(1, Rig.Q + 5, 0);
        r.Dev.RunOnce();
        Expect(r, "vq1: AvailIndexJump");
    }

    [Fact]
    public void Device_writable_buffer_where_the_device_must_read()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        r.Desc(1, 0, r.TxBuf, 64, W, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "net tx: device-writable buffer");
    }

    [Fact]
    public void Block_header_in_a_device_writable_buffer()
    {
        using var r = new Rig(block: true);
        r.Start();
        r.Desc(0, 0, r.TxBuf, 16, N | W, 1);
        r.Desc(0, 1, r.TxBuf + 16, 1, W, 0);
        r.Avail(0, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "blk: request header not in a device-readable buffer");
    }

    [Fact]
    public void Block_request_without_a_status_byte()
    {
        using var r = new Rig(block: true);
        r.Start();
        r.Desc(0, 0, r.TxBuf, 16, 0, 0);
        r.Avail(0, 1, 0);
        r.Dev.RunOnce();
        Expect(r, "blk: no device-writable status byte");
    }

    [Fact]
    public void A_broken_device_recovers_after_reset()
    {
        using var r = new Rig();
        r.Start();
        r.GoodRx();
        r.Desc(1, 0, r.Canary, 64, 0, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Assert.True(r.NeedsReset);
        Assert.Equal(-Errno.EINVAL, r.V.Ioctl(Vhost.VHOST_VDPA_SET_STATUS, [ACKNOWLEDGE | DRIVER | FEATURES_OK | DRIVER_OK]));
        r.Start();
        Assert.False(r.NeedsReset);
        r.GoodRx();
        r.Vm.Memory.Fill(r.TxBuf, 64, 0x77);
        r.Desc(1, 0, r.TxBuf, 64, 0, 0);
        r.Avail(1, 1, 0);
        r.Dev.RunOnce();
        Assert.False(r.NeedsReset);
        Assert.Equal(1, r.UsedIdx(0));
        Assert.True(r.Vm.Memory.Span(r.RxBuf, 64).IndexOfAnyExcept((byte)0x77) < 0);
    }

    [Fact]
    public void Queue_larger_than_the_device_maximum_needs_reset()
    {
        using var r = new Rig();
        r.V.Reset();
        r.V.SetStatus(ACKNOWLEDGE | DRIVER);
        r.V.SetFeatures(Bit(F_VERSION_1) | Bit(F_ACCESS_PLATFORM));
        r.V.AddStatus(FEATURES_OK);
        r.V.SetVringNum(0, 512);                  // vhost accepts any power of two; the device's maximum is 256
        r.V.SetVringAddr(0, r.G, r.G + 0x2000, r.G + 0x4000);
        r.V.SetVringEnable(0, true);
        r.V.AddStatus(DRIVER_OK);
        Assert.True(r.NeedsReset);
        Assert.Contains(r.Dev.Counters.Errors.Keys, k => k.Contains("size 512"));
    }

    // --- generated hostile rings -------------------------------------------------------------------------------------

    public sealed record D(int Where, uint Len, ushort Flags, ushort Next, int Offset);
    public sealed record Case(D[] Tx, D[] Rx, ushort TxAvail, ushort RxAvail, ushort[] TxHeads, ushort[] RxHeads, bool Indirect, bool EventIdx);

    static readonly Gen<D> Descriptor =
        from place in Gen.Choose(0, 6)
        from len in Gen.OneOf(Gen.Choose(0, 256), Gen.Choose(0, 70000), Gen.Elements(0, 1, 16, 0x10000, int.MaxValue))
        from flags in Gen.Choose(0, 7)
        from next in Gen.OneOf(Gen.Choose(0, Rig.Q - 1), Gen.Choose(0, 0xffff))
        from offset in Gen.Choose(0, 0x3000)
        select new D(place, (uint)len, (ushort)flags, (ushort)next, offset);

    static readonly Arbitrary<Case> Cases = Arb.From(
        from tx in Gen.ArrayOf(Descriptor, Rig.Q)
        from rx in Gen.ArrayOf(Descriptor, Rig.Q)
        from txAvail in Gen.OneOf(Gen.Choose(0, Rig.Q), Gen.Choose(0, 0xffff))
        from rxAvail in Gen.OneOf(Gen.Choose(0, Rig.Q), Gen.Choose(0, 0xffff))
        from txHeads in Gen.ArrayOf(Gen.OneOf(Gen.Choose(0, Rig.Q - 1), Gen.Choose(0, 0xffff)), Rig.Q)
        from rxHeads in Gen.ArrayOf(Gen.OneOf(Gen.Choose(0, Rig.Q - 1), Gen.Choose(0, 0xffff)), Rig.Q)
        from indirect in Gen.Elements(true, false)
        from eventIdx in Gen.Elements(true, false)
        select new Case(tx, rx, (ushort)txAvail, (ushort)rxAvail, txHeads.Select(h => (ushort)h).ToArray(),
            rxHeads.Select(h => (ushort)h).ToArray(), indirect, eventIdx));

    /// <summary>Where a generated descriptor points: RW buffers, an indirect table area, the RO window, the canary (unmapped),
    /// the rings themselves, far outside, or the top of the IOVA space.</summary>
    static ulong Address(Rig r, D d) => d.Where switch
    {
        0 => r.TxBuf + (ulong)d.Offset,
        1 => r.RxBuf + (ulong)d.Offset,
        2 => r.Ro + (ulong)d.Offset,
        3 => r.Canary + (ulong)d.Offset,
        4 => r.G + (ulong)(d.Offset & 0x3ff0),
        5 => 0xffff_ffff_ffff_f000UL + (ulong)(d.Offset & 0xfff),
        _ => (ulong)d.Offset << 20,
    };

    [Fact]
    public void Generated_hostile_rings_never_reach_outside_the_IOTLB()
    {
        using var r = new Rig();
        int broken = 0, ran = 0;
        Prop.ForAll(Cases, c =>
        {
            r.Start(c.Indirect, c.EventIdx);
            // Indirect tables live in the TX buffer area: fill some with descriptors of the same hostile kinds.
            for (int i = 0; i < Rig.Q; i++)
            {
                r.Desc(1, i, Address(r, c.Tx[i]), c.Tx[i].Len, c.Tx[i].Flags, c.Tx[i].Next);
                r.Desc(0, i, Address(r, c.Rx[i]), c.Rx[i].Len, c.Rx[i].Flags, c.Rx[i].Next);
                r.TableEntry(r.TxBuf + 0x1000, i, Address(r, c.Rx[i]), c.Rx[i].Len, c.Rx[i].Flags, c.Rx[i].Next);
            }
            r.Avail(0, c.RxAvail, c.RxHeads);
            r.Avail(1, c.TxAvail, c.TxHeads);
            r.Dev.RunOnce();
            r.Dev.RunOnce();
            r.AssertNoStrayAccess();
            ran++;
            if (r.NeedsReset)
            {
                broken++;
                return r.Dev.Counters.ErrorTotal > 0;
            }
            return true;
        }).Check(PropertyRuns.Quick.WithMaxTest(2000));
        Assert.Equal(2000, ran);
        Assert.InRange(broken, 1, 1999);   // the generator produces both refused and accepted rings
    }
}
