using FsCheck;
using FsCheck.Fluent;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Virtio;
using Xunit;
using VirtLab.Tests;

namespace VirtLab.Sdk.Tests.Virtio;

/// <summary>
/// FsCheck properties of the split virtqueue: (1) random valid operation sequences agree with a simple reference model
/// (FIFO lists of chains); (2) ≥ 10,000 generated malformed rings give only typed errors, and no access outside the mapped
/// window — which sits in an IOVA space between unmapped IOVA ranges, with guard bytes around it in guest memory.
/// </summary>
public sealed class VirtqueueProperties : IDisposable
{
    readonly Vm vm = Vm.Create(new VmOptions(16.MiB()) { Backend = Backend.Sim });

    public void Dispose() => vm.Dispose();

    // ---- 1. valid sequences vs a reference model ----------------------------------------------------

    /// <summary>Operations: 0 add, 1 kick, 2 device pops, 3 device pushes one held chain, 4 flush, 5 driver collects, 6/7 interrupts off/on.</summary>
    record struct Op(int Kind, int A, int B, bool Flag);

    static readonly Gen<Op> OpGen =
        from kind in Gen.Frequency((5, Gen.Constant(0)), (2, Gen.Constant(1)), (3, Gen.Constant(2)), (3, Gen.Constant(3)),
            (2, Gen.Constant(4)), (3, Gen.Constant(5)), (1, Gen.Constant(6)), (1, Gen.Constant(7)))
        from a in Gen.Choose(0, 4)
        from b in Gen.Choose(0, 4)
        from flag in Gen.Elements(true, false)
        select new Op(kind, a, b, flag);

    static readonly Arbitrary<(int sizeLog, bool eventIdx, bool indirect, Op[] ops)> Sequences = Arb.From(
        from sizeLog in Gen.Choose(0, 4)
        from ev in Gen.Elements(true, false)
        from ind in Gen.Elements(true, false)
        from ops in Gen.ArrayOf(OpGen)
        select (sizeLog, ev, ind, ops));

    sealed record Chain(ulong Token, byte[][] Readable, int[] Writable, ulong[] ReadAddr, ulong[] WriteAddr, int Descs, bool Indirect)
    {
        public long WritableBytes => Writable.Sum();
    }

    [Fact]
    public void Random_valid_sequences_agree_with_a_reference_model() => Prop.ForAll(Sequences, t =>
    {
        int size = 1 << t.sizeLog;
        var features = VirtioFeatures.Version1 | (t.eventIdx ? VirtioFeatures.EventIdx : 0) | (t.indirect ? VirtioFeatures.IndirectDesc : 0);
        var space = vm.PhysicalSpace;
        var g = vm.TestSlot.Gpa;
        var ring = SplitRing.Contiguous(g, size);
        var ia = new IndirectArea(g + 0x10000, 8);
        var bufBase = g + 0x100000;
        var drv = new SplitQueueDriver(space, ring, features, indirect: t.indirect ? ia : null);
        var dev = new SplitQueueDevice(space, ring, features);
        var rnd = new Random(t.ops.Length * 7919 + size);

        int free = size;
        ulong nextToken = 0;
        var unpublished = new List<Chain>();
        var avail = new Queue<Chain>();
        var held = new List<(Chain chain, VirtqChain vq)>();
        var pushed = new List<(Chain, uint)>();
        var used = new Queue<(Chain, uint)>();
        var inDriver = new Dictionary<ulong, Chain>();

        foreach (var op in t.ops)
        {
            switch (op.Kind)
            {
                case 0: // add a chain of A readable and B writable buffers (at least one)
                {
                    int r = op.A, w = op.B == 0 && op.A == 0 ? 1 : op.B;
                    var token = nextToken;
                    var region = bufBase + (token % 256) * 0x400; // ≤ 16 chains in flight: regions never collide
                    var rd = Enumerable.Range(0, r).Select(k => Enumerable.Range(0, 1 + rnd.Next(64)).Select(_ => (byte)rnd.Next(256)).ToArray()).ToArray();
                    var rdAddr = Enumerable.Range(0, r).Select(k => region + (ulong)k * 0x40).ToArray();
                    var wrLen = Enumerable.Range(0, w).Select(_ => 1 + rnd.Next(64)).ToArray();
                    var wrAddr = Enumerable.Range(0, w).Select(k => region + 0x200 + (ulong)k * 0x40).ToArray();
                    for (int k = 0; k < r; k++) space.Write(rdAddr[k], rd[k]);
                    bool useInd = t.indirect && op.Flag && r + w <= ia.EntriesPerChain;
                    int needed = useInd ? 1 : r + w;
                    if (needed > size) break; // a chain longer than the queue is refused (tested elsewhere)
                    var ok = drv.TryAdd(rdAddr.Zip(rd, (a, d) => new VirtqBuffer(a, (uint)d.Length)).ToArray(),
                        wrAddr.Zip(wrLen, (a, l) => new VirtqBuffer(a, (uint)l)).ToArray(), token, out _, useInd);
                    if (ok != (free >= needed)) return false;
                    if (!ok) break;
                    nextToken++;
                    free -= needed;
                    var c = new Chain(token, rd, wrLen, rdAddr, wrAddr, needed, useInd);
                    unpublished.Add(c);
                    inDriver[token] = c;
                    break;
                }
                case 1:
                    drv.KickIfNeeded();
                    foreach (var c in unpublished) avail.Enqueue(c);
                    unpublished.Clear();
                    break;
                case 2: // the device pops up to A chains; each must be the next one published, with its bytes
                    for (int k = 0; k <= op.A; k++)
                    {
                        var ok = dev.TryPop(out var vq);
                        if (ok != avail.Count > 0) return false;
                        if (!ok) break;
                        var c = avail.Dequeue();
                        if (vq.ReadableBytes != c.Readable.Sum(x => x.Length) || vq.WritableBytes != c.WritableBytes || vq.Indirect != c.Indirect) return false;
                        var bytes = new byte[vq.ReadableBytes];
                        vq.ReadReadable(0, bytes);
                        if (!bytes.SequenceEqual(c.Readable.SelectMany(x => x))) return false;
                        held.Add((c, vq));
                    }
                    break;
                case 3: // the device completes one held chain (any order), writing a token-derived pattern
                {
                    if (held.Count == 0) break;
                    var (c, vq) = held[(op.A * 5 + op.B) % held.Count];
                    held.Remove((c, vq));
                    var written = (uint)(c.WritableBytes == 0 ? 0 : 1 + rnd.Next((int)c.WritableBytes));
                    var pattern = Enumerable.Range(0, (int)written).Select(i => (byte)(c.Token * 17 + (ulong)i)).ToArray();
                    if (vq.WriteWritable(0, pattern) != written) return false;
                    dev.Push(vq, written);
                    pushed.Add((c, written));
                    break;
                }
                case 4:
                    dev.Flush();
                    foreach (var p in pushed) used.Enqueue(p);
                    pushed.Clear();
                    break;
                case 5: // the driver collects up to A used buffers, in push order, with lengths and bytes
                    for (int k = 0; k <= op.A; k++)
                    {
                        var ok = drv.TryGetUsed(out var u);
                        if (ok != used.Count > 0) return false;
                        if (!ok) break;
                        var (c, written) = used.Dequeue();
                        if (u.Token != c.Token || u.Length != written) return false;
                        var got = new List<byte>();
                        for (int i = 0; i < c.WriteAddr.Length; i++) got.AddRange(space.ReadBytes(c.WriteAddr[i], c.Writable[i]));
                        if (!got.Take((int)written).SequenceEqual(Enumerable.Range(0, (int)written).Select(i => (byte)(c.Token * 17 + (ulong)i)))) return false;
                        free += c.Descs;
                        inDriver.Remove(c.Token);
                    }
                    break;
                case 6:
                    drv.DisableInterrupts();
                    break;
                case 7:
                    drv.EnableInterrupts();
                    break;
            }
            if (drv.FreeDescriptors != free || drv.InFlight != inDriver.Count || dev.InFlight != held.Count || dev.IsBroken) return false;
        }
        return true;
    }).Check(PropertyRuns.Quick.WithMaxTest(300));

    // ---- 2. malformed rings -------------------------------------------------------------------------

    // IOVA layout: the RW window (ring, indirect tables, buffers), an RO page and a WO page, each between unmapped ranges.
    const ulong RwIova = 0x10_0000, RoIova = 0x20_0000, WoIova = 0x30_0000;
    const int RwBytes = 0x8000, Page = 0x1000, Guard = 0x10000;
    const ulong RingOff = 0, TablesOff = 0x1000, BuffersOff = 0x2000;

    static readonly Gen<ulong> Addr = Gen.Frequency(
        (8, Gen.Choose((int)BuffersOff, RwBytes - 1).Select(o => RwIova + (ulong)o)),
        (2, Gen.Choose(0, Page - 1).Select(o => RoIova + (ulong)o)),
        (2, Gen.Choose(0, Page - 1).Select(o => WoIova + (ulong)o)),
        (1, Gen.Choose(1, 256).Select(o => RwIova - (ulong)o)),
        (1, Gen.Choose(-256, 256).Select(o => RwIova + RwBytes + (ulong)(long)o)),
        (1, Gen.Choose(-64, 64).Select(o => RoIova + Page + (ulong)(long)o)),
        (2, Gen.Choose(0, 3).Select(t => RwIova + TablesOff + (ulong)t * 0x100)), // an indirect table's start
        (1, Gen.Choose(0, 0x1fff).Select(o => RwIova + (ulong)o)), // into the ring or the tables
        (1, Gen.Elements(0UL, ulong.MaxValue, ulong.MaxValue - 7, 1UL << 63, 0x4000_0000UL)));

    static readonly Gen<uint> Len = Gen.Frequency(
        (8, Gen.Choose(1, 512).Select(x => (uint)x)),
        (2, Gen.Choose(1, 8).Select(n => (uint)n * 16)), // a plausible indirect table length
        (1, Gen.Elements(0u, 16u, 32u, 48u, 24u, 4096u, 0x8000u, 0x1_0000u, uint.MaxValue, 65537u * 16)));

    static readonly Gen<ushort> Flags = Gen.Frequency(
        (6, Gen.Elements<ushort>(0, VirtqConst.DescFNext, VirtqConst.DescFWrite, VirtqConst.DescFWrite | VirtqConst.DescFNext)),
        (2, Gen.Elements<ushort>(VirtqConst.DescFIndirect)),
        (1, Gen.Choose(0, 0xffff).Select(x => (ushort)x)));

    /// <summary>A vring_desc exactly as it lies in memory (16 bytes, little-endian).</summary>
    [System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential, Pack = 1)]
    record struct RawDesc(ulong Addr, uint Len, ushort Flags, ushort Next);

    static Gen<RawDesc> DescGen(int tableLen) =>
        from a in Addr
        from l in Len
        from f in Flags
        from n in Gen.Frequency((8, Gen.Choose(0, tableLen - 1)), (1, Gen.Choose(0, 0xffff)))
        select new RawDesc(a, l, f, (ushort)n);

    sealed record Ring(int Size, bool EventIdx, RawDesc[] Descs, RawDesc[][] Tables, ushort[] Heads, int AvailDelta, bool PushBetween);

    static readonly Arbitrary<Ring> Rings = Arb.From(
        from sizeLog in Gen.Choose(0, 4)
        let size = 1 << sizeLog
        from ev in Gen.Elements(true, false)
        from descs in Gen.ArrayOf(DescGen(size), size)
        from tables in Gen.ArrayOf(Gen.Choose(1, 8).SelectMany(n => Gen.ArrayOf(DescGen(n), n)), 4)
        from heads in Gen.ArrayOf(Gen.Frequency((9, Gen.Choose(0, size - 1)), (1, Gen.Choose(0, 0xffff))).Select(h => (ushort)h), size)
        from delta in Gen.Frequency((9, Gen.Choose(0, size)), (1, Gen.Choose(size + 1, 0xffff)))
        from push in Gen.Elements(true, false)
        select new Ring(size, ev, descs, tables, heads, delta, push));

    [Fact]
    public void Malformed_rings_give_typed_errors_and_never_touch_memory_outside_the_window()
    {
        // Guest memory: [guard | RW window | RO page | WO page | guard], all in the test slot; only the middle is mapped in
        // the IOVA space, each piece at its own IOVA with unmapped IOVA around it.
        var g = vm.TestSlot.Gpa + 0x40_0000;
        ulong rwGpa = g + Guard, roGpa = rwGpa + RwBytes, woGpa = roGpa + Page, end = woGpa + Page;
        const byte guardByte = 0xa5;
        vm.Memory.Fill(g, Guard, guardByte);
        vm.Memory.Fill(end, Guard, guardByte);
        var iotlb = new IovaSpace(vm.PhysicalSpace, "fuzz IOTLB");
        iotlb.Map(RwIova, RwBytes, rwGpa, MemoryAccess.ReadWrite);
        iotlb.Map(RoIova, Page, roGpa, MemoryAccess.Read);
        iotlb.Map(WoIova, Page, woGpa, MemoryAccess.Write);
        var host = vm.Memory.HostAddress(rwGpa);
        var hostEnd = host + (nint)(end - rwGpa);
        var kinds = new Dictionary<VirtqErrorKind, int>();
        long chains = 0, outside = 0, cases = 0;

        Prop.ForAll(Rings, r =>
        {
            cases++;
            vm.Memory.Fill(rwGpa, RwBytes, 0);
            var ring = SplitRing.Contiguous(RwIova + RingOff, r.Size);
            iotlb.Write(ring.DescAddress, System.Runtime.InteropServices.MemoryMarshal.AsBytes(r.Descs.AsSpan()));
            for (int t = 0; t < r.Tables.Length; t++)
                iotlb.Write(RwIova + TablesOff + (ulong)t * 0x100, System.Runtime.InteropServices.MemoryMarshal.AsBytes(r.Tables[t].AsSpan()));
            iotlb.Write(ring.AvailAddress + 4, System.Runtime.InteropServices.MemoryMarshal.AsBytes(r.Heads.AsSpan()));
            iotlb.Write(ring.AvailAddress + 2, (ushort)r.AvailDelta);
            var dev = new SplitQueueDevice(iotlb, ring, VirtioFeatures.Version1 | VirtioFeatures.IndirectDesc | (r.EventIdx ? VirtioFeatures.EventIdx : 0));
            var held = new List<VirtqChain>();
            for (int k = 0; k < r.Size + 2 && dev.TryPop(out var c); k++) // never throws: that is the property too
            {
                chains++;
                foreach (var s in c.Segments)
                {
                    var p = s.Host;
                    var inside = p >= host && p + s.Length <= hostEnd && s.Address >= RwIova && iotlb.Find(s.Address) is { } m
                        && s.Address + (ulong)s.Length <= m.Iova + m.Size && (m.Perm & (s.Writable ? MemoryAccess.Write : MemoryAccess.Read)) != 0;
                    if (!inside) outside++;
                }
                c.WriteWritable(0, Enumerable.Repeat((byte)0x5a, (int)Math.Min(c.WritableBytes, 4096)).ToArray());
                if (r.PushBetween) dev.Push(c, (uint)Math.Min(c.WritableBytes, 4096));
                else held.Add(c);
            }
            foreach (var c in held) dev.Push(c, 0);
            dev.Flush();
            if (dev.Error is { } e)
            {
                kinds[e.Kind] = kinds.GetValueOrDefault(e.Kind) + 1;
                if (e.Kind is VirtqErrorKind.BufferFault && e.Fault is null) return false;
            }
            return true;
        }).Check(PropertyRuns.Quick.WithMaxTest(10_000));

        Assert.Equal(10_000, cases);
        Assert.Equal(0, outside);
        Assert.True(chains > 1000, $"only {chains} well-formed chains were popped: the generator is too hostile to test the good path");
        Assert.All(vm.Memory.Span(g, Guard).ToArray(), b => Assert.Equal(guardByte, b));
        Assert.All(vm.Memory.Span(end, Guard).ToArray(), b => Assert.Equal(guardByte, b));
        // Every kind the generator can produce was produced (RingFault needs an unmapped ring; not generated here).
        foreach (var k in Enum.GetValues<VirtqErrorKind>().Where(k => k != VirtqErrorKind.RingFault))
            Assert.True(kinds.GetValueOrDefault(k) > 0, $"no {k} in 10,000 rings: {string.Join(", ", kinds)}");
    }
}
