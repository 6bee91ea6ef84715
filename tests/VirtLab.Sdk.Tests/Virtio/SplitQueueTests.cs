using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Virtio;
using Xunit;

namespace VirtLab.Sdk.Tests.Virtio;

public class SplitQueueTests
{
    const VirtioFeatures V1 = VirtioFeatures.Version1;
    const VirtioFeatures Ev = VirtioFeatures.Version1 | VirtioFeatures.EventIdx;

    [Fact]
    public void Layout_follows_the_spec()
    {
        var r = SplitRing.Contiguous(0x10000, 256);
        Assert.Equal(0x10000UL + 256 * 16, r.AvailAddress);
        Assert.Equal(0x10000UL + 4096 + 6 + 512 + 2, r.UsedAddress); // avail ends at +4614, aligned up to 4
        Assert.Equal(4096 + 518 + 2 + 6 + 2048, SplitRing.ContiguousBytes(256));
        var legacy = SplitRing.Contiguous(0, 256, usedAlign: 4096);
        Assert.Equal(8192UL, legacy.UsedAddress); // vring_size(256, 4096) = 8192 + 2054
        Assert.Equal(8192 + 2054, SplitRing.ContiguousBytes(256, 4096));
        foreach (var n in new[] { 1, 2, 4, 1024, 32768 }) Assert.Equal(n, SplitRing.Contiguous(0, n).Size);
        foreach (var n in new[] { 0, 3, 100, 65536, -1 })
            Assert.Contains("power of two from 1 to 32768", Assert.Throws<ArgumentOutOfRangeException>(() => SplitRing.Contiguous(0, n)).Message);
        Assert.Contains("16-byte aligned", Assert.Throws<ArgumentException>(() => new SplitRing(8, 8, 256, 512).Validate()).Message);
        Assert.Contains("4-byte aligned", Assert.Throws<ArgumentException>(() => new SplitRing(8, 0, 256, 514).Validate()).Message);
    }

    [Fact]
    public void Round_trip_carries_data_both_ways()
    {
        using var q = new QueuePair(16, V1);
        var req = q.Buffers;
        var resp = q.Buffers + 0x1000;
        q.Space.Write(req, "hello, device"u8);
        var head = q.Driver.Add([new VirtqBuffer(req, 13)], [new VirtqBuffer(resp, 64)], token: 77);
        Assert.True(q.Driver.KickIfNeeded());
        Assert.Equal(1UL, q.Kick.Read());

        Assert.True(q.Device.TryPop(out var c));
        Assert.Equal(head, c.Head);
        Assert.Equal(13, c.ReadableBytes);
        Assert.Equal(64, c.WritableBytes);
        var got = new byte[13];
        Assert.Equal(13, c.ReadReadable(0, got));
        Assert.Equal("hello, device"u8.ToArray(), got);
        Assert.Equal(5, c.WriteWritable(0, "hi!!!"u8));
        q.Device.Push(c, 5);
        Assert.False(q.Device.TryPop(out _));
        Assert.True(q.Device.Flush());
        Assert.Equal(1UL, q.Call.Read());

        Assert.True(q.Driver.TryGetUsed(out var u));
        Assert.Equal(new UsedBuffer(head, 5, 77), u);
        Assert.Equal("hi!!!"u8.ToArray(), q.Space.ReadBytes(resp, 5));
        Assert.False(q.Driver.TryGetUsed(out _));
        Assert.Equal(16, q.Driver.FreeDescriptors);
        Assert.Equal(0, q.Driver.InFlight);
        Assert.Equal(0, q.Device.InFlight);
    }

    [Fact]
    public void Multi_buffer_chains_keep_order_and_lengths()
    {
        using var q = new QueuePair(8, V1);
        var b = q.Buffers;
        for (int i = 0; i < 5; i++) q.Space.Write(b + (ulong)i * 0x100, Enumerable.Repeat((byte)(i + 1), 10 + i).ToArray());
        q.Driver.Add([new(b, 10), new(b + 0x100, 11), new(b + 0x200, 12)], [new(b + 0x300, 13), new(b + 0x400, 14)], 1);
        Assert.Equal(3, q.Driver.FreeDescriptors);
        Assert.False(q.Driver.TryAdd([new(b, 1), new(b, 1), new(b, 1), new(b, 1)], [], 2, out _)); // 4 > 3 free
        q.Driver.KickIfNeeded();
        Assert.True(q.Device.TryPop(out var c));
        Assert.Equal(5, c.Descriptors);
        Assert.Equal(3, c.ReadableCount);
        Assert.Equal([10, 11, 12], c.Readable.ToArray().Select(s => s.Length));
        Assert.Equal([13, 14], c.Writable.ToArray().Select(s => s.Length));
        var all = new byte[33];
        c.ReadReadable(0, all);
        Assert.Equal(Enumerable.Repeat((byte)1, 10).Concat(Enumerable.Repeat((byte)2, 11)).Concat(Enumerable.Repeat((byte)3, 12)), all);
        Assert.Equal(0x0202, c.Read<ushort>(10)); // crosses nothing; 11th byte is the second buffer's
        Assert.Equal(27, c.WriteWritable(0, Enumerable.Range(0, 27).Select(x => (byte)x).ToArray()));
        q.Device.Push(c, 27);
        q.Device.Flush();
        Assert.True(q.Driver.TryGetUsed(out var u));
        Assert.Equal(27u, u.Length);
        Assert.Equal(Enumerable.Range(0, 13).Select(x => (byte)x), q.Space.ReadBytes(b + 0x300, 13));
        Assert.Equal(Enumerable.Range(13, 14).Select(x => (byte)x), q.Space.ReadBytes(b + 0x400, 14));
        Assert.Equal(8, q.Driver.FreeDescriptors);
    }

    [Fact]
    public void Indirect_chains_use_one_ring_descriptor()
    {
        using var q = new QueuePair(4, V1 | VirtioFeatures.IndirectDesc, indirectEntries: 16);
        var b = q.Buffers;
        for (int round = 0; round < 10; round++)
        {
            for (int k = 0; k < 4; k++) // 4 chains of 10 buffers each in a queue of 4 descriptors
            {
                var rd = Enumerable.Range(0, 6).Select(i => new VirtqBuffer(b + (ulong)(k * 16 + i) * 64, 64)).ToArray();
                var wr = Enumerable.Range(6, 4).Select(i => new VirtqBuffer(b + (ulong)(k * 16 + i) * 64, 64)).ToArray();
                for (int i = 0; i < 6; i++) q.Space.Write(rd[i].Address, Enumerable.Repeat((byte)(round * 40 + k * 10 + i), 64).ToArray());
                q.Driver.Add(rd, wr, (ulong)k);
            }
            Assert.Equal(0, q.Driver.FreeDescriptors);
            q.Driver.KickIfNeeded();
            for (int k = 0; k < 4; k++)
            {
                Assert.True(q.Device.TryPop(out var c));
                Assert.True(c.Indirect);
                Assert.Equal(11, c.Descriptors); // the ring's indirect descriptor + 10 table entries
                Assert.Equal(6 * 64, c.ReadableBytes);
                var data = new byte[6 * 64];
                c.ReadReadable(0, data);
                for (int i = 0; i < 6; i++) Assert.All(data.AsSpan(i * 64, 64).ToArray(), x => Assert.Equal((byte)(round * 40 + k * 10 + i), x));
                c.WriteWritable(0, Enumerable.Repeat((byte)0xee, 256).ToArray());
                q.Device.Push(c, 256);
            }
            q.Device.Flush();
            for (int k = 0; k < 4; k++)
            {
                Assert.True(q.Driver.TryGetUsed(out var u));
                Assert.Equal((ulong)k, u.Token);
                Assert.Equal(256u, u.Length);
            }
            Assert.Equal(4, q.Driver.FreeDescriptors);
        }
        Assert.All(q.Space.ReadBytes(b + (ulong)(3 * 16 + 9) * 64, 64), x => Assert.Equal(0xee, x));
    }

    [Fact]
    public void Indices_wrap_around_16_bits()
    {
        using var q = new QueuePair(8, Ev);
        var b = q.Buffers;
        const int total = 70_000;
        var payload = new byte[8];
        var seen = 0;
        for (int i = 0; i < total; i += 4)
        {
            int n = Math.Min(4, total - i); // 4 chains of 2 descriptors fill the queue of 8
            for (int k = 0; k < n; k++)
            {
                BitConverter.TryWriteBytes(payload, (long)(i + k));
                q.Space.Write(b + (ulong)k * 16, payload);
                q.Driver.Add([new(b + (ulong)k * 16, 8)], [new(b + (ulong)k * 16 + 8, 8)], (ulong)(i + k));
            }
            q.Driver.KickIfNeeded();
            while (q.Device.TryPop(out var c))
            {
                var v = c.Read<long>(0);
                c.Write(0, ~v);
                q.Device.Push(c, 8);
            }
            q.Device.Flush();
            while (q.Driver.TryGetUsed(out var u))
            {
                Assert.Equal((ulong)seen, u.Token);
                Assert.Equal(~seen, q.Space.Read<long>(b + (ulong)(seen - i) * 16 + 8));
                seen++;
            }
        }
        Assert.Equal(total, seen);
        Assert.Equal(unchecked((ushort)total), q.Driver.AvailIdx);
        Assert.Equal(unchecked((ushort)total), q.Device.LastAvailIdx);
        Assert.Equal(unchecked((ushort)total), q.Device.UsedIdx);
        Assert.Equal(unchecked((ushort)total), q.Space.Read<ushort>(q.Ring.UsedAddress + 2));
    }

    /// <summary>
    /// A scripted sequence with hand-computed notification counts: without EVENT_IDX the flags decide
    /// (NO_NOTIFY / NO_INTERRUPT); with it avail_event / used_event do (vring_need_event).
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Notification_counts_for_a_scripted_sequence(bool eventIdx)
    {
        using var q = new QueuePair(8, eventIdx ? Ev : V1);
        var buf = new VirtqBuffer(q.Buffers, 16);
        var d = q.Driver;
        var dev = q.Device;
        void Add(int n) { for (int i = 0; i < n; i++) d.Add([buf], [], 0); }
        int Process() { int n = 0; while (dev.TryPop(out var c)) { dev.Push(c, 0); n++; } return n; }
        int Collect() { int n = 0; while (d.TryGetUsed(out _)) n++; return n; }

        // 1. First kick: the device is idle (avail_event 0, flags clear) → kick either way.
        Add(1);
        Assert.True(d.KickIfNeeded());
        // 2. The device has not looked yet: with EVENT_IDX avail_event is still 0, index 1 → 2 does not cross it.
        Add(1);
        Assert.Equal(!eventIdx, d.KickIfNeeded());
        // 3. The device drains the ring: finding it empty it re-arms (avail_event = 2; or the flag stays clear).
        Assert.Equal(2, Process());
        // 4. Interrupt: the first flush after start always notifies with EVENT_IDX (vhost's signalled_used_valid);
        //    without it NO_INTERRUPT is clear.
        Assert.True(dev.Flush());
        Assert.Equal(2, Collect()); // the driver writes used_event = 2
        // 5. Two adds, one kick: 2 → 4 crosses avail_event 2 → kick.
        Add(2);
        Assert.True(d.KickIfNeeded());
        // 6. The device disables kicks while busy: without EVENT_IDX NO_NOTIFY is set → the next kick is suppressed;
        //    with EVENT_IDX avail_event stays at 2 → 4 → 5 does not cross it → suppressed too.
        dev.DisableKicks();
        Add(1);
        Assert.False(d.KickIfNeeded());
        // 7. Device pushes one, flushes: used 2 → 3 crosses used_event 2 → interrupt; without EVENT_IDX flag clear → interrupt.
        Assert.True(dev.TryPop(out var c1));
        dev.Push(c1, 0);
        Assert.True(dev.Flush());
        // 8. The driver has not collected: with EVENT_IDX used_event is still 2, 3 → 4 does not cross → suppressed.
        Assert.True(dev.TryPop(out var c2));
        dev.Push(c2, 0);
        Assert.Equal(!eventIdx, dev.Flush());
        // 9. The driver disables interrupts; the device finishes the rest → suppressed either way.
        d.DisableInterrupts();
        Assert.Equal(1, Process());
        Assert.False(dev.Flush());
        // 10. Nothing new: neither side counts anything.
        Assert.False(d.KickIfNeeded());
        Assert.False(dev.Flush());
        // 11. The driver re-enables: buffers are pending (true), collects them.
        Assert.True(d.EnableInterrupts());
        Assert.Equal(3, Collect());
        // 12. The device re-enables kicks (nothing pending) and the driver adds: kick.
        Assert.False(dev.EnableKicks());
        Add(1);
        Assert.True(d.KickIfNeeded());

        var kicks = eventIdx ? (3, 2) : (4, 1);
        var interrupts = eventIdx ? (2, 2) : (3, 1);
        Assert.Equal(kicks, (d.NotificationsSent, d.NotificationsSuppressed));
        Assert.Equal(interrupts, (dev.NotificationsSent, dev.NotificationsSuppressed));
        Assert.Equal((kicks.Item1, kicks.Item2), (q.Kick.Sent, q.Kick.Suppressed));
        Assert.Equal((interrupts.Item1, interrupts.Item2), (q.Call.Sent, q.Call.Suppressed));
        Assert.Equal((ulong)kicks.Item1, q.Kick.Read()); // the eventfd counter holds every signal since nobody read it
        Assert.Equal((ulong)interrupts.Item1, q.Call.Read());
    }

    /// <summary>
    /// EnableInterruptsAfter(n) with EVENT_IDX: the device interrupts only when its used index passes n more buffers
    /// (flushes before that are suppressed); without EVENT_IDX the flag cannot delay, so the first flush interrupts.
    /// </summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Interrupts_after_n_used_buffers(bool eventIdx)
    {
        using var q = new QueuePair(8, eventIdx ? Ev : V1);
        var d = q.Driver;
        var dev = q.Device;
        for (int i = 0; i < 6; i++) d.Add([new VirtqBuffer(q.Buffers, 16)], [], (ulong)i);
        d.KickIfNeeded();
        Assert.Throws<ArgumentOutOfRangeException>(() => d.EnableInterruptsAfter(7)); // only 6 in flight
        // The device's first flush always notifies with EVENT_IDX (signalled_used_valid): get it out of the way.
        Assert.True(dev.TryPop(out var c0));
        dev.Push(c0, 0);
        Assert.True(dev.Flush());
        Assert.True(d.TryGetUsed(out _));
        Assert.False(d.EnableInterruptsAfter(4));          // none pending
        var flushes = new List<bool>();
        for (int i = 0; i < 5; i++)
        {
            Assert.True(dev.TryPop(out var c));
            dev.Push(c, 0);
            flushes.Add(dev.Flush());
        }
        // EVENT_IDX: used_event = 1 + 4 − 1 = 4, crossed by the flush that publishes index 5 (the 4th buffer).
        Assert.Equal(eventIdx ? [false, false, false, true, false] : new[] { true, true, true, true, true }, flushes);
        Assert.True(d.EnableInterruptsAfter(2));          // 5 are pending already: collect them first
    }

    [Fact]
    public void Queue_in_an_iova_space_translates_every_buffer()
    {
        using var q = new QueuePair(8, V1);
        // The device sees the ring and buffers through an IOTLB: ring RO/WO per part, one buffer split across two
        // mappings that are not contiguous in gpa.
        var iotlb = new IovaSpace(q.Space, "iotlb");
        const ulong iova = 0x1000_0000;
        var ringBytes = (ulong)SplitRing.ContiguousBytes(8);
        iotlb.Map(iova, ringBytes, q.Ring.DescAddress, MemoryAccess.ReadWrite);
        var devRing = new SplitRing(8, iova, iova + (q.Ring.AvailAddress - q.Ring.DescAddress), iova + (q.Ring.UsedAddress - q.Ring.DescAddress));
        iotlb.Map(0x2000_0000, 0x800, q.Buffers + 0x10000, MemoryAccess.Read);
        iotlb.Map(0x2000_0800, 0x800, q.Buffers + 0x40000, MemoryAccess.Read);
        iotlb.Map(0x3000_0000, 0x1000, q.Buffers + 0x80000, MemoryAccess.Write);
        var dev = new SplitQueueDevice(iotlb, devRing, V1, name: "vq0 via iotlb");
        var data = Enumerable.Range(0, 0x1000).Select(i => (byte)(i * 7)).ToArray();
        q.Space.Write(q.Buffers + 0x10000, data.AsSpan(0, 0x800));
        q.Space.Write(q.Buffers + 0x40000, data.AsSpan(0x800));
        q.Driver.Add([new(0x2000_0000, 0x1000)], [new(0x3000_0000, 0x1000)], 5); // IOVAs in the descriptors
        q.Driver.KickIfNeeded();
        Assert.True(dev.TryPop(out var c));
        Assert.Equal(2, c.ReadableCount); // one descriptor, two mappings
        var got = new byte[0x1000];
        c.ReadReadable(0, got);
        Assert.Equal(data, got);
        c.WriteWritable(0, got);
        dev.Push(c, 0x1000);
        dev.Flush();
        Assert.True(q.Driver.TryGetUsed(out var u));
        Assert.Equal(0x1000u, u.Length);
        Assert.Equal(data, q.Space.ReadBytes(q.Buffers + 0x80000, 0x1000));

        // A buffer the IOTLB maps read-only cannot be device-writable: BufferFault with a permission fault, queue broken.
        q.Driver.Add([], [new(0x2000_0000, 16)], 6);
        q.Driver.KickIfNeeded();
        Assert.False(dev.TryPop(out _));
        Assert.True(dev.IsBroken);
        Assert.Equal(VirtqErrorKind.BufferFault, dev.Error!.Kind);
        Assert.Equal(MemoryFaultReason.Permission, dev.Error.Fault!.Value.Reason);
        Assert.Same(iotlb, dev.Error.Fault.Value.Space);
        Assert.Equal(1, dev.ErrorCount(VirtqErrorKind.BufferFault));
    }

    [Fact]
    public void Ring_unmapped_under_the_device_is_a_ring_fault()
    {
        using var q = new QueuePair(8, V1);
        var iotlb = new IovaSpace(q.Space, "iotlb");
        iotlb.Map(0, (ulong)SplitRing.ContiguousBytes(8), q.Ring.DescAddress);
        var dev = new SplitQueueDevice(iotlb, SplitRing.Contiguous(0, 8), V1);
        Assert.False(dev.TryPop(out _));
        Assert.False(dev.IsBroken);
        iotlb.RemoveOverlapping(0, 1);
        q.Driver.Add([new(q.Buffers, 8)], [], 0);
        q.Driver.KickIfNeeded();
        Assert.False(dev.TryPop(out _));
        Assert.Equal(VirtqErrorKind.RingFault, dev.Error!.Kind);
        Assert.Contains("descriptor table", dev.Error.Message);
    }

    [Fact]
    public void Two_threads_move_200k_requests_with_every_byte_checked()
    {
        using var q = new QueuePair(256, Ev | VirtioFeatures.IndirectDesc, indirectEntries: 4, memory: 32.MiB());
        const int total = 200_000;
        const int slots = 256;
        const int len = 64;
        var b = q.Buffers;
        var cts = new CancellationTokenSource(TimeSpan.FromMinutes(2));
        long deviceErrors = 0;
        var device = Task.Factory.StartNew(() =>
        {
            var buf = new byte[len];
            int done = 0;
            while (done < total)
            {
                bool any = false;
                while (q.Device.TryPop(out var c))
                {
                    any = true;
                    c.ReadReadable(0, buf);
                    var seq = BitConverter.ToInt64(buf);
                    for (int i = 8; i < len; i++)
                        if (buf[i] != (byte)(seq * 31 + i)) deviceErrors++;
                    for (int i = 0; i < len; i++) buf[i] = (byte)~buf[i];
                    c.WriteWritable(0, buf);
                    q.Device.Push(c, len);
                    done++;
                }
                q.Device.Flush();
                if (!any) q.Kick.WaitAndRead(TimeSpan.FromMilliseconds(50), cts.Token);
            }
        }, TaskCreationOptions.LongRunning);

        var slotOf = new Dictionary<ulong, int>();
        var free = new Stack<int>(Enumerable.Range(0, slots));
        var payload = new byte[len];
        var back = new byte[len];
        long sent = 0, received = 0, driverErrors = 0;
        while (received < total)
        {
            while (sent < total && free.Count > 0)
            {
                int s = free.Pop();
                var at = b + (ulong)s * 2 * len;
                BitConverter.TryWriteBytes(payload, sent);
                for (int i = 8; i < len; i++) payload[i] = (byte)(sent * 31 + i);
                q.Space.Write(at, payload);
                // Alternate direct two-descriptor chains and indirect ones.
                if (!q.Driver.TryAdd([new(at, len)], [new(at + len, len)], (ulong)sent, out _, indirect: sent % 2 == 0)) { free.Push(s); break; }
                slotOf[(ulong)sent] = s;
                sent++;
            }
            q.Driver.KickIfNeeded();
            bool got = false;
            while (q.Driver.TryGetUsed(out var u))
            {
                got = true;
                var s = slotOf[u.Token];
                slotOf.Remove(u.Token);
                var at = b + (ulong)s * 2 * len;
                q.Space.Read(at + len, back);
                for (int i = 0; i < len; i++)
                {
                    var expect = i < 8 ? (byte)~(byte)((ulong)u.Token >> (8 * i)) : (byte)~(byte)((long)u.Token * 31 + i);
                    if (back[i] != expect) driverErrors++;
                }
                if (u.Length != len) driverErrors++;
                free.Push(s);
                received++;
            }
            if (!got && q.Driver.EnableInterrupts() == false) q.Call.WaitAndRead(TimeSpan.FromMilliseconds(50), cts.Token);
            Assert.False(device.IsFaulted, device.Exception?.ToString());
        }
        device.Wait(cts.Token);
        Assert.Equal(0, deviceErrors);
        Assert.Equal(0, driverErrors);
        Assert.Equal(total, received);
        Assert.False(q.Device.IsBroken);
    }

    [Fact]
    public void Tables_render()
    {
        using var q = new QueuePair(8, Ev);
        q.Driver.Add([new(q.Buffers, 8)], [], 1);
        q.Driver.Add([new(q.Buffers, 8)], [], 2);
        q.Driver.KickIfNeeded();
        q.Device.TryPop(out _);
        var text = Render.Text(q.Device.ToRenderable(), q.Device.ChainsInFlight(), q.Driver.ToRenderable(), q.Driver.ChainsInFlight(), q.Kick.ToRenderable());
        Assert.Contains("EVENT_IDX", text);
        Assert.Contains("device last_avail_idx", text);
        Assert.Contains("chains held by the device", text);
        Assert.Contains("kicks sent / suppressed", text);
        Assert.Contains("notifier kick", text);
    }

    [Fact]
    public void A_chain_whose_buffer_slot_was_removed_after_the_pop_refuses_its_copies_with_a_Disposed_fault()
    {
        using var q = new QueuePair(8, V1);
        var extra = q.Vm.AddSlot(1.MiB());
        for (int k = 0; k < 2; k++) // a one-segment chain, then a two-segment one (the general copy path)
        {
            var bufs = k == 0 ? new VirtqBuffer[] { new(extra.Gpa, 16) } : [new(extra.Gpa, 8), new(extra.Gpa + 64, 8)];
            q.Driver.Add(bufs, [new(extra.Gpa + 4096, 16)], (ulong)k);
            q.Driver.KickIfNeeded();
            Assert.True(q.Device.TryPop(out var c));
            Assert.Equal(16, c.ReadReadable(0, new byte[16]));
            if (k == 1)
            {
                q.Vm.RemoveSlot(extra.Id);
                var e = Assert.Throws<MemoryFaultException>(() => c.ReadReadable(0, new byte[16]));
                Assert.Equal(MemoryFaultReason.Disposed, e.Fault.Reason);
                e = Assert.Throws<MemoryFaultException>(() => c.WriteWritable(0, new byte[16]));
                Assert.Equal(MemoryFaultReason.Disposed, e.Fault.Reason);
            }
            q.Device.Push(c, 0);
            q.Device.Flush();
            Assert.True(q.Driver.TryGetUsed(out _));
        }
    }

    [Fact]
    public void A_removed_slot_fails_the_one_segment_copy_too()
    {
        using var q = new QueuePair(8, V1);
        var extra = q.Vm.AddSlot(1.MiB());
        q.Driver.Add([new(extra.Gpa, 16)], [], 0);
        q.Driver.Add([], [new(extra.Gpa + 64, 16)], 1);
        q.Driver.KickIfNeeded();
        Assert.True(q.Device.TryPop(out var r));
        Assert.True(q.Device.TryPop(out var w));
        q.Vm.RemoveSlot(extra.Id);
        Assert.Equal(MemoryFaultReason.Disposed, Assert.Throws<MemoryFaultException>(() => r.ReadReadable(0, new byte[16])).Fault.Reason);
        Assert.Equal(MemoryFaultReason.Disposed, Assert.Throws<MemoryFaultException>(() => w.WriteWritable(0, new byte[16])).Fault.Reason);
        // The guard slots were released on the way out: a copy through another chain of the queue still works.
        q.Device.Push(r, 0);
        q.Device.Push(w, 0);
        q.Device.Flush();
        q.Driver.Add([new(q.Buffers, 16)], [], 2);
        q.Driver.KickIfNeeded();
        Assert.True(q.Device.TryPop(out var again));
        Assert.Equal(16, again.ReadReadable(0, new byte[16]));
    }

    [Fact]
    public void DisableInterrupts_when_already_off_stores_nothing()
    {
        // Linux's flags shadow: a second virtqueue_disable_cb leaves the ring alone (used_event parked where the first put it).
        using var q = new QueuePair(8, Ev);
        var usedEvent = q.Vm.Memory.Span(q.Ring.AvailAddress + 4 + 2 * 8, 2);
        q.Driver.DisableInterrupts();
        Assert.Equal(ushort.MaxValue, System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(usedEvent)); // last used 0 − 1
        usedEvent[0] = 0x42; usedEvent[1] = 0;
        q.Driver.DisableInterrupts();
        Assert.Equal(0x42, System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(usedEvent));
        Assert.False(q.Driver.EnableInterrupts());
        Assert.Equal(0, System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(usedEvent)); // re-armed for the next used buffer
        q.Driver.DisableInterrupts();
        Assert.Equal(ushort.MaxValue, System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(usedEvent));
    }

    [Fact]
    public void DisableKicks_sets_NO_NOTIFY_only_when_the_ring_has_it_clear()
    {
        using var q = new QueuePair(8, V1);
        var flags = q.Vm.Memory.Span(q.Ring.UsedAddress, 2);
        q.Device.DisableKicks();
        Assert.Equal(1, flags[0] & 1);
        q.Device.DisableKicks();                 // already set: unchanged
        Assert.Equal(1, flags[0] & 1);
        flags[0] = 0;                            // the flag is read from the ring, not a shadow: a cleared flag is set again
        q.Device.DisableKicks();
        Assert.Equal(1, flags[0] & 1);
        Assert.False(q.Device.EnableKicks());
        Assert.Equal(0, flags[0] & 1);
    }
}
