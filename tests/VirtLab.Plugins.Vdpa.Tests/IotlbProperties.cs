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
using static VirtLab.Plugins.Vdpa.Uapi.Vhost;
using VirtLab.Tests;

namespace VirtLab.Plugins.Vdpa.Tests;

/// <summary>
/// Generated IOTLB message sequences (valid, overlapping, overflowing, outside the VM, malformed, batched) written as
/// bytes: whatever the sequence, the table stays disjoint and page-granular, maps only VM memory, the device's map
/// equals it outside a batch and is frozen inside one, and each accepted or refused message had the kernel's effect.
/// </summary>
public class IotlbProperties
{
    public sealed record Msg(int Header, byte Type, int IovaKind, ulong IovaPages, int IovaOff, int SizeKind, ulong SizePages,
        int UaddrKind, ulong UaddrPages, byte Perm, int Truncate);

    static readonly Gen<Msg> Messages =
        from header in Gen.Frequency((20, Gen.Constant(2)), (1, Gen.Constant(1)), (1, Gen.Elements(0, 3, 77)))
        from type in Gen.Frequency((10, Gen.Constant(VHOST_IOTLB_UPDATE)), (5, Gen.Constant(VHOST_IOTLB_INVALIDATE)),
            (2, Gen.Constant(VHOST_IOTLB_BATCH_BEGIN)), (2, Gen.Constant(VHOST_IOTLB_BATCH_END)), (1, Gen.Elements<byte>(0, 1, 4, 7, 255)))
        from iovaKind in Gen.Frequency((8, Gen.Constant(0)), (1, Gen.Constant(1)), (1, Gen.Constant(2)))
        from iovaPages in Gen.Choose(0, 63)
        from iovaOff in Gen.Frequency((6, Gen.Constant(0)), (1, Gen.Choose(1, 4095)))
        from sizeKind in Gen.Frequency((8, Gen.Constant(0)), (1, Gen.Constant(1)), (1, Gen.Constant(2)), (1, Gen.Constant(3)))
        from sizePages in Gen.Choose(1, 16)
        from uaddrKind in Gen.Frequency((8, Gen.Constant(0)), (1, Gen.Constant(1)), (1, Gen.Constant(2)))
        from uaddrPages in Gen.Choose(0, 2047)
        from perm in Gen.Choose(0, 3)
        from truncate in Gen.Frequency((30, Gen.Constant(0)), (1, Gen.Choose(1, 39)))
        select new Msg(header, type, iovaKind, (ulong)iovaPages, iovaOff, sizeKind, (ulong)sizePages, uaddrKind, (ulong)uaddrPages, (byte)perm, truncate);

    static readonly Arbitrary<Msg[]> Sequences = Arb.From(Gen.ArrayOf(Messages).Select(a => a.Take(24).ToArray()));

    sealed class State : IDisposable
    {
        public readonly Vm Vm = Vm.Create(8.MiB(), backend: Backend.Sim);
        public readonly VdpaNetDevice Dev = new() { ManualWorker = true };
        public readonly VhostVdpa V;
        public readonly MemSlot Slot;

        public State()
        {
            V = new VhostVdpa(Dev, Vm, new EventFdTable().Resolve);
            V.SetOwner();
            Slot = Vm.TestSlot;
        }

        public void Dispose()
        {
            Dev.Dispose();
            Vm.Dispose();
        }
    }

    static (ulong Iova, ulong Size, ulong Uaddr) Decode(State s, Msg m)
    {
        ulong iova = m.IovaKind switch
        {
            0 => m.IovaPages * 0x1000 + (ulong)m.IovaOff,
            1 => ulong.MaxValue - m.IovaPages * 0x1000 - (ulong)m.IovaOff,
            _ => m.IovaPages << 40,
        };
        ulong size = m.SizeKind switch
        {
            0 => m.SizePages * 0x1000,
            1 => m.SizePages,
            2 => ulong.MaxValue - m.SizePages,
            _ => 0,
        };
        var hva = (ulong)s.Slot.HostAddress;
        ulong uaddr = m.UaddrKind switch
        {
            0 => hva + m.UaddrPages * 0x1000 % (ulong)s.Slot.Size.Bytes,
            1 => hva + (ulong)s.Slot.Size.Bytes - 0x1000,          // the last page: a longer range leaves the slot (or not)
            _ => m.UaddrPages * 0x1000,                             // not the VM's memory
        };
        return (iova, size, uaddr);
    }

    static byte[] Encode(Msg m, ulong iova, ulong size, ulong uaddr)
    {
        var b = new byte[MsgV2Size];
        BinaryPrimitives.WriteUInt32LittleEndian(b, (uint)m.Header);
        new IotlbMsg(iova, size, uaddr, m.Perm, m.Type).Write(b.AsSpan(8));
        return m.Truncate > 0 ? b[..m.Truncate] : b;
    }

    static bool Disjoint(IReadOnlyList<IovaMapping> maps)
    {
        for (int i = 1; i < maps.Count; i++)
            if (maps[i - 1].Last >= maps[i].Iova) return false;
        return true;
    }

    [Fact]
    public void Generated_message_sequences_keep_the_IOTLB_consistent()
    {
        using var s = new State();
        var vmMem = s.Vm.PhysicalSpace;
        long accepted = 0, refused = 0;
        Prop.ForAll(Sequences, seq =>
        {
            // Fresh state per case: leave any batch, drop every mapping.
            s.V.BatchEnd();
            s.V.Unmap(0, ulong.MaxValue);
            s.V.Unmap(ulong.MaxValue, 1);
            Assert.Empty(s.V.Iotlb.Mappings);
            Assert.Empty(s.Dev.DeviceMap);
            IReadOnlyList<IovaMapping>? frozen = null;
            foreach (var m in seq)
            {
                var (iova, size, uaddr) = Decode(s, m);
                var before = s.V.Iotlb.Mappings.ToArray();
                bool inBatch = s.V.InBatch;
                long r = s.V.Write(Encode(m, iova, size, uaddr));
                var after = s.V.Iotlb.Mappings;

                // Malformed messages: -EINVAL, nothing changes.
                bool malformed = m.Truncate is > 0 and < 40 || m.Header is not (1 or 2) ||
                                 ((m.Type == VHOST_IOTLB_UPDATE || m.Type == VHOST_IOTLB_INVALIDATE) && size == 0);
                if (malformed && m.Truncate is > 0 and < 4) Assert.Equal(-Errno.EINVAL, r);
                if (malformed) { Assert.Equal(-Errno.EINVAL, r); Assert.Equal(before, after); continue; }
                Assert.True(r == MsgV2Size || r == MsgSize || r == -Errno.EFAULT, $"write returned {r}");
                if (r < 0) refused++; else accepted++;

                switch (m.Type)
                {
                    case VHOST_IOTLB_UPDATE when r > 0:
                        // The range is now mapped with the message's perm, page for page: the page of iova at the page of uaddr.
                        Assert.True(vmMem.TryGpaOfHostAddress(uaddr & ~0xfffUL, out var gpa));
                        var hit = s.V.Iotlb.Find(iova)!.Value;
                        Assert.Equal((MemoryAccess)m.Perm, hit.Perm);
                        Assert.Equal(gpa + (iova & 0xfff), hit.Target + (iova - hit.Iova));
                        Assert.NotNull(s.V.Iotlb.Find(iova + (size - 1)));
                        Assert.DoesNotContain(before, b => b.Overlaps(iova, size));
                        break;
                    case VHOST_IOTLB_UPDATE:
                        Assert.Equal(before, after);
                        if (iova + (size - 1) < iova) Assert.Equal(Errno.EINVAL, s.V.LastIotlbErrno);        // overflow
                        else if (before.Any(b => b.Overlaps(iova, size))) Assert.Equal(Errno.EEXIST, s.V.LastIotlbErrno);
                        break;
                    case VHOST_IOTLB_INVALIDATE:
                        Assert.True(r > 0);
                        if (iova + (size - 1) >= iova) Assert.DoesNotContain(after, a => a.Overlaps(iova, size));
                        else Assert.Equal(before, after);                                                 // wraps: finds nothing
                        break;
                    case VHOST_IOTLB_BATCH_BEGIN:
                        Assert.True(r > 0);
                        if (!inBatch) frozen = s.Dev.DeviceMap.ToArray();
                        break;
                    case VHOST_IOTLB_BATCH_END:
                        Assert.True(r > 0);
                        break;
                    default:
                        Assert.Equal(-Errno.EFAULT, r);
                        Assert.Equal(Errno.EINVAL, s.V.LastIotlbErrno);
                        break;
                }

                // Invariants after every message.
                Assert.True(Disjoint(after));
                foreach (var a in after)
                {
                    Assert.Equal(0UL, a.Iova & 0xfff);
                    Assert.Equal(0UL, a.Size & 0xfff);
                    Assert.True(s.Vm.Memory.Contains(a.Target, (long)a.Size), $"{a} maps outside the VM's memory");
                }
                if (s.V.InBatch) Assert.Equal(frozen, s.Dev.DeviceMap);
                else Assert.Equal(after, s.Dev.DeviceMap);
            }
            return true;
        }).Check(PropertyRuns.Quick.WithMaxTest(10_000));
        Assert.True(accepted > 1000 && refused > 1000, $"{accepted} accepted, {refused} refused: the generator covers both");
    }
}
