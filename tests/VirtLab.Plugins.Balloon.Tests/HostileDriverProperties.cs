using System.Buffers.Binary;
using System.Diagnostics;
using FsCheck;
using FsCheck.Fluent;
using VirtLab.Plugins.Balloon.Host;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Virtio;
using Xunit;
using VirtLab.Tests;

namespace VirtLab.Plugins.Balloon.Tests;

/// <summary>
/// A hostile guest driver writes its own rings (no SDK driver queue to keep it honest) and sends generated requests:
/// good ones, and PFNs or ranges outside guest RAM, repeats and overlaps, overflowing shifts and lengths, bitmaps past
/// their buffer, lying lengths, oversized requests, wrong-direction buffers and chains that break the ring rules.
/// Each bad request must be refused and counted under its own kind, each good one served, the device's balloon must
/// equal the model's after every request, and system slot 0 (the sentinel outside guest RAM) must survive byte for byte.
/// 3 transports × 3,400 requests = 10,200 generated requests per run.
/// </summary>
public sealed class HostileDriverProperties
{
    const int RequestsPerTransport = 3400;

    enum Kind { GoodInflate, GoodDeflate, Repeat, OverlapRuns, AlreadyIn, NotIn, Beyond, SystemSlot, Gap, Format, TooLarge, WrongDirection, BrokenChain }

    static readonly Gen<(Kind, int)> Requests =
        from k in Gen.Frequency(
            (6, Gen.Constant(Kind.GoodInflate)), (5, Gen.Constant(Kind.GoodDeflate)), (1, Gen.Constant(Kind.Repeat)),
            (1, Gen.Constant(Kind.OverlapRuns)), (1, Gen.Constant(Kind.AlreadyIn)), (1, Gen.Constant(Kind.NotIn)),
            (1, Gen.Constant(Kind.Beyond)), (1, Gen.Constant(Kind.SystemSlot)), (1, Gen.Constant(Kind.Gap)),
            (3, Gen.Constant(Kind.Format)), (1, Gen.Constant(Kind.TooLarge)), (1, Gen.Constant(Kind.WrongDirection)),
            (1, Gen.Constant(Kind.BrokenChain)))
        from seed in Gen.Choose(0, int.MaxValue)
        select (k, seed);

    [Theory]
    [InlineData(BalloonTransport.Pfn)]
    [InlineData(BalloonTransport.Bitmap)]
    [InlineData(BalloonTransport.Ranges)]
    public void Bad_requests_are_refused_and_counted_and_nothing_outside_guest_ram_is_touched(BalloonTransport transport)
    {
        using var vm = DiscardEngineTests.SimVm(16.MiB());
        using var h = new Harness(vm, transport);
        Prop.ForAll(Arb.From(Requests), r => h.Run(r.Item1, r.Item2))
            .Check(PropertyRuns.Quick.WithMaxTest(RequestsPerTransport).WithQuietOnSuccess(true));
        h.CheckSentinel();
        Assert.True(h.Served > RequestsPerTransport / 3, $"only {h.Served} good requests were served");
        Assert.True(h.RefusedCount > RequestsPerTransport / 4, $"only {h.RefusedCount} bad requests were generated");
    }

    sealed class Harness : IDisposable
    {
        const int Q = 16; // queue size
        readonly Vm vm;
        readonly VirtioBalloonModel dev;
        readonly BalloonTransport transport;
        readonly SplitRing[] rings = new SplitRing[2];
        readonly ushort[] avail = new ushort[2], used = new ushort[2];
        readonly ulong buf;            // request buffers (128 KiB)
        readonly long first, end;      // the pages the harness may balloon
        readonly HashSet<long> model = [];
        readonly byte[] sentinel;
        public int Served, RefusedCount;

        public Harness(Vm vm, BalloonTransport transport)
        {
            this.vm = vm;
            this.transport = transport;
            var slot = vm.TestSlot;
            vm.Memory.Populate(slot.Gpa, slot.Size);
            // The sentinel: all of system slot 0, stamped, must come out unchanged and resident.
            var sys = vm.SystemSlot;
            sentinel = new byte[sys.Size.Bytes];
            new Random(7).NextBytes(sentinel);
            vm.Memory.WithSystemSlotWrites().Write(sys.Gpa, sentinel); // stamped deliberately: slot 0 refuses host writes otherwise
            rings[0] = SplitRing.Contiguous(slot.Gpa, Q);
            rings[1] = SplitRing.Contiguous(slot.Gpa + 8192, Q);
            buf = slot.Gpa + 65536;
            first = (long)slot.BaseGfn + 64; // rings and buffers live in the first 256 KiB
            end = (long)slot.BaseGfn + slot.Pages;
            dev = new VirtioBalloonModel(vm, ulong.MaxValue, DiscardMode.Auto, DeflateHint.WillNeed, wholeThpPages: true);
            dev.WriteStatus((byte)(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver));
            dev.WriteDriverFeatures(VirtioBalloon.Bit(VirtioBalloon.F_MUST_TELL_HOST) | transport.Feature() | (ulong)VirtioFeatures.Version1);
            dev.WriteStatus((byte)(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver | VirtioDeviceStatus.FeaturesOk));
            dev.SetQueue(0, rings[0]);
            dev.SetQueue(1, rings[1]);
            dev.WriteStatus((byte)(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver | VirtioDeviceStatus.FeaturesOk | VirtioDeviceStatus.DriverOk));
        }

        long Total => Enum.GetValues<BalloonErrorKind>().Sum(k => dev.Refused(k));

        public bool Run(Kind kind, int seed)
        {
            var rnd = new Random(seed);
            int q = 0;
            BalloonErrorKind? expect = null;
            List<PageRun> runs;
            byte[]? raw = null;
            bool writable = false, broken = false;
            long free = end - first - model.Count;
            switch (kind)
            {
                case Kind.GoodDeflate when model.Count > 0:
                    q = 1;
                    runs = Pick(rnd, model.ToArray(), rnd.Next(1, 200));
                    break;
                case Kind.GoodInflate or Kind.GoodDeflate:
                    if (free == 0) { q = 1; runs = Pick(rnd, model.ToArray(), 100); break; }
                    runs = Pick(rnd, Range(first, end).Where(p => !model.Contains(p)).ToArray(), rnd.Next(1, 200));
                    break;
                case Kind.Repeat:
                    runs = Pick(rnd, Range(first, end).Where(p => !model.Contains(p)).ToArray(), rnd.Next(1, 20));
                    if (runs.Count == 0) return true;
                    runs.Add(new PageRun(runs[rnd.Next(runs.Count)].First, 1));
                    expect = BalloonErrorKind.Overlap;
                    break;
                case Kind.OverlapRuns:
                {
                    long s = first + rnd.Next((int)(end - first - 40));
                    runs = [new PageRun(s, 20), new PageRun(s + rnd.Next(1, 20), rnd.Next(1, 20))];
                    expect = BalloonErrorKind.Overlap;
                    break;
                }
                case Kind.AlreadyIn when model.Count > 0:
                    runs = [new PageRun(model.ElementAt(rnd.Next(model.Count)), 1)];
                    expect = BalloonErrorKind.AlreadyInBalloon;
                    break;
                case Kind.NotIn or Kind.AlreadyIn:
                {
                    q = 1;
                    var outside = Range(first, end).Where(p => !model.Contains(p)).ToArray();
                    if (outside.Length == 0) return true;
                    runs = [new PageRun(outside[rnd.Next(outside.Length)], 1)];
                    expect = BalloonErrorKind.NotInBalloon;
                    break;
                }
                case Kind.Beyond:
                    runs = [new PageRun(end - rnd.Next(0, 3), rnd.Next(4, 100))];
                    expect = BalloonErrorKind.OutsideRam;
                    break;
                case Kind.SystemSlot:
                    runs = [new PageRun(rnd.Next(0, (int)vm.SystemSlot.Pages), 1)];
                    expect = BalloonErrorKind.OutsideRam;
                    break;
                case Kind.Gap:
                    runs = [new PageRun(vm.SystemSlot.Pages + rnd.Next(0, 1000), 1)];
                    expect = BalloonErrorKind.OutsideRam;
                    break;
                case Kind.Format:
                    (raw, expect) = Garbage(rnd);
                    runs = [];
                    break;
                case Kind.TooLarge:
                    raw = new byte[transport switch { BalloonTransport.Pfn => 1028, BalloonTransport.Bitmap => 8 + 65536 + 8, _ => 16 * 4097 }];
                    expect = BalloonErrorKind.TooLarge;
                    runs = [];
                    break;
                case Kind.WrongDirection:
                    runs = [new PageRun(first, 1)];
                    writable = true;
                    expect = BalloonErrorKind.WrongDirection;
                    break;
                default: // BrokenChain
                    runs = [];
                    broken = true;
                    expect = BalloonErrorKind.BadChain;
                    break;
            }
            if (runs.Count == 0 && raw is null && !broken) return true;
            if (!broken) raw ??= Encode(runs, rnd);
            var before = dev.Refused(expect ?? BalloonErrorKind.Malformed);
            var total = Total;
            if (broken) SubmitBroken(q, rnd);
            else Submit(q, raw!, writable);
            if (expect is { } k)
            {
                RefusedCount++;
                if (dev.Refused(k) != before + 1 || Total != total + 1)
                    throw new Exception($"{kind}: expected one {k} refusal; counters {string.Join(", ", dev.ErrorCounters)}; last {dev.LastError}");
            }
            else
            {
                if (Total != total) throw new Exception($"{kind}: a good request was refused: {dev.LastError}");
                Served++;
                foreach (var r in runs)
                    for (long p = r.First; p < r.End; p++)
                        if (q == 0) model.Add(p); else model.Remove(p);
            }
            if (dev.Engine.BalloonedPages != model.Count)
                throw new Exception($"{kind}: the device holds {dev.Engine.BalloonedPages} pages, the model {model.Count}");
            return true;
        }

        static IEnumerable<long> Range(long a, long b) { for (long p = a; p < b; p++) yield return p; }

        static List<PageRun> Pick(Random rnd, long[] from, int n)
        {
            rnd.Shuffle(from);
            var pick = from.Take(n).Order().ToArray();
            var runs = new List<PageRun>();
            PageRangeFormat.Coalesce(pick, runs);
            return runs;
        }

        byte[] Encode(List<PageRun> runs, Random rnd)
        {
            switch (transport)
            {
                case BalloonTransport.Pfn:
                {
                    var pfns = runs.SelectMany(r => Range(r.First, r.End)).ToArray();
                    rnd.Shuffle(pfns);
                    if (pfns.Length > 256) pfns = pfns[..256]; // keep it a valid PFN request; the model follows what was sent
                    var b = new byte[pfns.Length * 4];
                    PfnArrayFormat.Encode(pfns, b);
                    runs.Clear();
                    runs.AddRange(pfns.Select(p => new PageRun(p, 1)));
                    return b;
                }
                case BalloonTransport.Bitmap:
                {
                    // Each run as power-of-two zero-length headers, or (sometimes, when the runs are disjoint) as bitmap words.
                    var data = new List<byte>();
                    var disjoint = runs.OrderBy(r => r.First).Zip(runs.OrderBy(r => r.First).Skip(1)).All(x => x.First.End <= x.Second.First);
                    if (disjoint && rnd.Next(2) == 0)
                    {
                        long min = runs.Min(r => r.First) & ~63L, max = runs.Max(r => r.End);
                        var bm = new DirtyBitmap(max - min);
                        foreach (var r in runs) bm.SetRange(r.First - min, r.Count);
                        var d = new byte[PageBitmapFormat.MaxDataSize];
                        int w = 0, n = PageBitmapFormat.Encode(bm, min, ref w, d);
                        data.AddRange(d.AsSpan(0, n).ToArray());
                    }
                    else
                        foreach (var r in runs)
                            for (long s = r.First; s < r.End;)
                            {
                                int log = 63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)(r.End - s));
                                data.AddRange(BitConverter.GetBytes(PageBitmapFormat.Head(s, 12 + log, 0)));
                                s += 1L << log;
                            }
                    var req = new byte[8 + data.Count];
                    PageBitmapFormat.WriteResponseHeader(req, 1, data.Count);
                    data.CopyTo(req, 8);
                    return req;
                }
                default:
                {
                    var b = new byte[runs.Count * 16];
                    PageRangeFormat.Encode(runs.ToArray(), b);
                    return b;
                }
            }
        }

        (byte[], BalloonErrorKind) Garbage(Random rnd)
        {
            switch (transport)
            {
                case BalloonTransport.Pfn:
                    return rnd.Next(2) == 0 ? (new byte[rnd.Next(1, 64) * 4 + rnd.Next(1, 4)], BalloonErrorKind.Malformed) : (new byte[4 * rnd.Next(257, 300)], BalloonErrorKind.TooLarge);
                case BalloonTransport.Bitmap:
                {
                    int pick = rnd.Next(6);
                    ulong head = pick switch
                    {
                        0 => (ulong)rnd.Next(0, 12) << 52 | (ulong)first,                                     // shift below 12
                        1 => (ulong)((1L << 52) - rnd.Next(1, 1000)) | (ulong)rnd.Next(30, 64) << 52,           // a run past 2^52
                        2 => PageBitmapFormat.Head(first, 12, rnd.Next(2, 64)),                                 // words past the buffer
                        _ => PageBitmapFormat.Head(first, 12, 0),
                    };
                    var req = new byte[16];
                    PageBitmapFormat.WriteResponseHeader(req, 1, 8);
                    BinaryPrimitives.WriteUInt64LittleEndian(req.AsSpan(8), head);
                    if (pick == 3) BinaryPrimitives.WriteUInt32LittleEndian(req.AsSpan(4), (uint)rnd.Next(9, 100000));   // data_len beyond the descriptors
                    if (pick == 4) BinaryPrimitives.WriteUInt32LittleEndian(req.AsSpan(4), 0);                          // data_len short of them
                    if (pick == 5) req[0] = (byte)rnd.Next(1, 256);                                                       // unknown cmd
                    return (req, pick switch
                    {
                        1 => BalloonErrorKind.Overflow, 2 => BalloonErrorKind.PastBuffer, 3 => BalloonErrorKind.TooLarge, _ => BalloonErrorKind.Malformed,
                    });
                }
                default:
                {
                    var b = new byte[16];
                    int pick = rnd.Next(3);
                    if (pick == 2) return (new byte[16 * rnd.Next(1, 5) + rnd.Next(1, 16)], BalloonErrorKind.Malformed);
                    BinaryPrimitives.WriteUInt64LittleEndian(b, pick == 0 ? (ulong)first : (ulong)((1L << 52) - rnd.Next(1, 100)));
                    BinaryPrimitives.WriteUInt64LittleEndian(b.AsSpan(8), pick == 0 ? 0 : (ulong)rnd.NextInt64(100, long.MaxValue));
                    return (b, pick == 0 ? BalloonErrorKind.Malformed : BalloonErrorKind.Overflow);
                }
            }
        }

        void WriteDesc(int q, int i, ulong addr, uint len, ushort flags, ushort next)
        {
            var a = rings[q].DescAddress + (ulong)i * 16;
            vm.Memory.Write(a, addr);
            vm.Memory.Write(a + 8, len);
            vm.Memory.Write(a + 12, flags);
            vm.Memory.Write(a + 14, next);
        }

        void Publish(int q, ushort head)
        {
            vm.Memory.Write(rings[q].AvailAddress + 4 + 2UL * (ulong)(avail[q] % Q), head);
            avail[q]++;
            Thread.MemoryBarrier();
            vm.Memory.Write(rings[q].AvailAddress + 2, avail[q]);
            dev.Doorbell.Signal();
        }

        /// <summary>The request in one or two readable descriptors (or a writable one), then wait for the used entry.</summary>
        void Submit(int q, byte[] bytes, bool writable)
        {
            vm.Memory.Write(buf, bytes);
            if (!writable && bytes.Length > 8 && transport == BalloonTransport.Bitmap)
            {
                WriteDesc(q, 0, buf, 8, VirtqConst.DescFNext, 1);
                WriteDesc(q, 1, buf + 8, (uint)bytes.Length - 8, 0, 0);
            }
            else WriteDesc(q, 0, buf, (uint)Math.Max(bytes.Length, 1), writable ? VirtqConst.DescFWrite : (ushort)0, 0);
            var want = (ushort)(used[q] + 1);
            Publish(q, 0);
            WaitFor(() => vm.Memory.Read<ushort>(rings[q].UsedAddress + 2) == want, "the used entry");
            used[q] = want;
        }

        /// <summary>A chain that breaks the ring rules: a head or next index out of range, or a loop.</summary>
        void SubmitBroken(int q, Random rnd)
        {
            var before = dev.Refused(BalloonErrorKind.BadChain);
            switch (rnd.Next(3))
            {
                case 0: Publish(q, (ushort)rnd.Next(Q, ushort.MaxValue)); break;
                case 1: WriteDesc(q, 2, buf, 4, VirtqConst.DescFNext, (ushort)rnd.Next(Q, ushort.MaxValue)); Publish(q, 2); break;
                default: WriteDesc(q, 3, buf, 4, VirtqConst.DescFNext, 3); Publish(q, 3); break;
            }
            WaitFor(() => dev.Refused(BalloonErrorKind.BadChain) == before + 1, "the refusal of a broken chain");
        }

        static void WaitFor(Func<bool> done, string what)
        {
            var sw = Stopwatch.StartNew();
            var spin = new SpinWait();
            while (!done())
            {
                if (sw.Elapsed > TimeSpan.FromSeconds(10)) throw new TimeoutException($"the device did not produce {what} within 10 s");
                spin.SpinOnce();
            }
        }

        public void CheckSentinel()
        {
            var now = new byte[sentinel.Length];
            vm.Memory.Read(vm.SystemSlot.Gpa, now);
            Assert.True(now.AsSpan().SequenceEqual(sentinel), "system slot 0 (outside guest RAM) changed");
            Assert.Equal(vm.SystemSlot.Size, vm.Memory.Resident(vm.SystemSlot.Gpa, vm.SystemSlot.Size));
        }

        public void Dispose() => dev.Dispose();
    }
}
