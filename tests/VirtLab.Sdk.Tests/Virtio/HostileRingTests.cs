using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Native;
using VirtLab.Sdk.Virtio;
using Xunit;

namespace VirtLab.Sdk.Tests.Virtio;

/// <summary>A driver writes the ring by hand, badly: every malformation is a typed, counted error that breaks only its queue.</summary>
public class HostileRingTests
{
    const ushort N = VirtqConst.DescFNext, W = VirtqConst.DescFWrite, I = VirtqConst.DescFIndirect;

    sealed class Raw : IDisposable
    {
        public readonly QueuePair Q = new(8, VirtioFeatures.Version1 | VirtioFeatures.IndirectDesc);
        ushort idx;

        public SplitQueueDevice Dev => Q.Device;
        public ulong Buf => Q.Buffers;

        public void Desc(int i, ulong addr, uint len, ushort flags = 0, ushort next = 0) => WriteDesc(Q.Ring.DescAddress, i, addr, len, flags, next);

        public void WriteDesc(ulong table, int i, ulong addr, uint len, ushort flags = 0, ushort next = 0)
        {
            var at = table + (ulong)i * 16;
            Q.Space.Write(at, addr);
            Q.Space.Write(at + 8, len);
            Q.Space.Write(at + 12, flags);
            Q.Space.Write(at + 14, next);
        }

        public void Avail(params ushort[] heads)
        {
            foreach (var h in heads) Q.Space.Write(Q.Ring.AvailAddress + 4 + 2UL * (ulong)(idx++ % 8), h);
            Q.Space.Write(Q.Ring.AvailAddress + 2, idx);
        }

        public void SetAvailIdx(ushort v) => Q.Space.Write(Q.Ring.AvailAddress + 2, idx = v);

        public VirtqError PopFails(VirtqErrorKind kind)
        {
            Assert.False(Dev.TryPop(out _));
            Assert.True(Dev.IsBroken);
            Assert.Equal(kind, Dev.Error!.Kind);
            Assert.Equal(1, Dev.ErrorCount(kind));
            Assert.Equal(1, Dev.Errors.Values.Sum());
            Assert.False(Dev.TryPop(out _)); // stays broken, counts nothing more
            Assert.Equal(1, Dev.Errors.Values.Sum());
            return Dev.Error;
        }

        public void Dispose() => Q.Dispose();
    }

    [Fact]
    public void Head_index_out_of_range()
    {
        using var r = new Raw();
        r.Avail(8);
        var e = r.PopFails(VirtqErrorKind.DescriptorIndex);
        Assert.Contains("head 8", e.Message);
        Assert.Contains("below the queue size 8", e.Message);
        Assert.Equal(Errno.EINVAL, e.Errno);
    }

    [Fact]
    public void Next_index_out_of_range()
    {
        using var r = new Raw();
        r.Desc(0, r.Buf, 8, N, 9);
        r.Avail(0);
        var e = r.PopFails(VirtqErrorKind.DescriptorIndex);
        Assert.Contains("next 9", e.Message);
        Assert.Equal(0, e.Head);
    }

    [Fact]
    public void Loop_in_the_chain()
    {
        using var r = new Raw();
        r.Desc(0, r.Buf, 8, N, 1);
        r.Desc(1, r.Buf, 8, N, 0);
        r.Avail(0);
        Assert.Contains("more than 8 descriptors", r.PopFails(VirtqErrorKind.ChainTooLong).Message);
    }

    [Fact]
    public void Loop_inside_an_indirect_table()
    {
        using var r = new Raw();
        var table = r.Buf + 0x1000;
        r.WriteDesc(table, 0, r.Buf, 8, N, 1);
        r.WriteDesc(table, 1, r.Buf, 8, N, 0);
        r.Desc(0, table, 32, I);
        r.Avail(0);
        Assert.Contains("indirect table's length", r.PopFails(VirtqErrorKind.ChainTooLong).Message);
    }

    [Fact]
    public void Nested_indirect()
    {
        using var r = new Raw();
        var table = r.Buf + 0x1000;
        r.WriteDesc(table, 0, table + 0x100, 16, I);
        r.Desc(0, table, 16, I);
        r.Avail(0);
        r.PopFails(VirtqErrorKind.NestedIndirect);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(24u)]
    [InlineData(65537u * 16)]
    public void Indirect_table_length(uint len)
    {
        using var r = new Raw();
        r.Desc(0, r.Buf, len, I);
        r.Avail(0);
        Assert.Contains($"indirect table of {len} bytes", r.PopFails(VirtqErrorKind.IndirectLength).Message);
    }

    [Fact]
    public void Indirect_with_next()
    {
        using var r = new Raw();
        r.Desc(0, r.Buf, 16, I | N, 1);
        r.Avail(0);
        r.PopFails(VirtqErrorKind.IndirectWithNext);
    }

    [Fact]
    public void Indirect_table_outside_memory()
    {
        using var r = new Raw();
        r.Desc(0, 0x7000_0000_0000, 16, I);
        r.Avail(0);
        var e = r.PopFails(VirtqErrorKind.BufferFault);
        Assert.Equal(MemoryFaultReason.Unmapped, e.Fault!.Value.Reason);
        Assert.Contains("indirect table", e.Message);
    }

    [Fact]
    public void Readable_after_writable()
    {
        using var r = new Raw();
        r.Desc(0, r.Buf, 8, W | N, 1);
        r.Desc(1, r.Buf + 8, 8);
        r.Avail(0);
        Assert.Contains("readable buffers must come first", r.PopFails(VirtqErrorKind.ReadableAfterWritable).Message);
    }

    [Fact]
    public void Readable_after_writable_inside_an_indirect_table()
    {
        using var r = new Raw();
        var table = r.Buf + 0x1000;
        r.WriteDesc(table, 0, r.Buf, 8, W | N, 1);
        r.WriteDesc(table, 1, r.Buf, 8);
        r.Desc(0, table, 32, I);
        r.Avail(0);
        r.PopFails(VirtqErrorKind.ReadableAfterWritable);
    }

    [Fact]
    public void Buffers_outside_guest_memory()
    {
        using var r = new Raw();
        var slot = r.Q.Vm.TestSlot;
        // Starts inside the slot and runs 1 byte past its end, into unmapped gpa space.
        r.Desc(0, slot.EndGpa - 8, 9);
        r.Avail(0);
        var e = r.PopFails(VirtqErrorKind.BufferFault);
        Assert.Equal(slot.EndGpa, e.Fault!.Value.Address);
        Assert.Equal(MemoryFaultReason.Unmapped, e.Fault.Value.Reason);
        Assert.Equal(Errno.EFAULT, e.Errno);
    }

    [Fact]
    public void Buffer_wrapping_the_address_space()
    {
        using var r = new Raw();
        r.Desc(0, ulong.MaxValue - 3, 16, W);
        r.Avail(0);
        Assert.Equal(MemoryFaultReason.Overflow, r.PopFails(VirtqErrorKind.BufferFault).Fault!.Value.Reason);
    }

    [Fact]
    public void Avail_index_jump()
    {
        using var r = new Raw();
        r.SetAvailIdx(9);
        Assert.Contains("from 0 to 9", r.PopFails(VirtqErrorKind.AvailIndexJump).Message);
    }

    [Fact]
    public void Same_head_twice_while_in_flight()
    {
        using var r = new Raw();
        r.Desc(0, r.Buf, 8);
        r.Avail(0, 0);
        Assert.True(r.Dev.TryPop(out _));
        r.PopFails(VirtqErrorKind.DuplicateHead);
    }

    [Fact]
    public void A_broken_queue_does_not_stop_another_and_reset_recovers()
    {
        using var r = new Raw();
        // A second, healthy queue on the same VM.
        var ring2 = SplitRing.Contiguous(r.Buf + 0x8000, 8);
        var drv2 = new SplitQueueDriver(r.Q.Space, ring2, VirtioFeatures.Version1, name: "vq1");
        var dev2 = new SplitQueueDevice(r.Q.Space, ring2, VirtioFeatures.Version1, name: "vq1");
        var status = VirtioDeviceStatus.DriverOk;
        r.Dev.Broken += (q, e) => status |= VirtioDeviceStatus.NeedsReset;

        r.Avail(8);
        Assert.False(r.Dev.TryPop(out _));
        Assert.Equal(VirtioDeviceStatus.DriverOk | VirtioDeviceStatus.NeedsReset, status);

        r.Q.Space.Write(r.Buf + 0x9000, 0x1122334455667788UL);
        drv2.Add([new(r.Buf + 0x9000, 8)], [new(r.Buf + 0x9008, 8)], 3);
        drv2.KickIfNeeded();
        Assert.True(dev2.TryPop(out var c));
        c.Write(0, c.Read<ulong>(0) + 1);
        dev2.PushAndFlush(c, 8);
        Assert.True(drv2.TryGetUsed(out var u));
        Assert.Equal(3UL, u.Token);
        Assert.Equal(0x1122334455667789UL, r.Q.Space.Read<ulong>(r.Buf + 0x9008));

        // The driver resets the device and starts over with a proper ring.
        r.Dev.Reset(lastAvailIdx: 1);
        Assert.False(r.Dev.IsBroken);
        r.Desc(0, r.Buf, 8);
        r.Avail(0);
        Assert.True(r.Dev.TryPop(out var ok));
        Assert.Equal(0, ok.Head);
        Assert.Equal(1, r.Dev.ErrorCount(VirtqErrorKind.DescriptorIndex)); // counts survive the reset
    }

    [Fact]
    public void Device_programming_errors_throw()
    {
        using var r = new Raw();
        r.Desc(0, r.Buf, 8, W);
        r.Avail(0);
        Assert.True(r.Dev.TryPop(out var c));
        Assert.Contains("has 8 writable bytes", Assert.Throws<ArgumentOutOfRangeException>(() => r.Dev.Push(c, 9)).Message);
        r.Dev.Push(c, 8);
        Assert.Contains("not held by the device", Assert.Throws<InvalidOperationException>(() => r.Dev.Push(c, 8)).Message);
    }
}
