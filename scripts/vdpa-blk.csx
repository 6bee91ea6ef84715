// vdpa-blk.csx — a virtio-blk driver over vhost-vdpa on a vdpa_sim-like RAM disk.
//
//   ./virtlab run scripts/vdpa-blk.csx -- --capacity 128M --total 256M --depth 16
//
// 1. Writes a pattern over the first --pattern bytes of the disk, reads it back through the device and compares
//    (and checks the device's RAM disk holds exactly what was written); FLUSH and GET_ID.
// 2. Throughput at 4 KiB and 64 KiB requests, reads and writes, --depth requests in flight: MiB/s and IOPS.
// 3. Ceiling: the SDK virtqueue alone moving the same request sizes (driver and device side on one thread,
//    copy into a buffer, no vhost, no worker thread), measured in the same run.

using System.Diagnostics;
using VirtLab.Sdk.Virtio;

var capacity = Arg("capacity", 128.MiB(), test: 8.MiB());
var pattern = Arg("pattern", 16.MiB(), test: 512.KiB());
var total = Arg("total", 256.MiB(), test: 2.MiB());
var depth = Arg("depth", 16);
var backend = Arg("backend", Backend.Auto);

var vm = Vm.Create(64.MiB(), backend: backend);
Console.WriteLine($"{vm.Backend} VM; {Environment.ProcessorCount} CPUs (shared machine: figures are indicative)");
var disk = vm.Attach(Vdpa.Block(capacityBytes: capacity.Bytes, depth: depth, maxRequestBytes: 64 << 10));
Show(disk);
Expect(disk.CapacitySectors == (ulong)capacity.Bytes / 512, $"the config space reports {capacity} ({capacity.Bytes / 512} sectors)");

// 1. Pattern round trip.
var data = new byte[(int)Math.Min(pattern.Bytes, capacity.Bytes)];
for (int i = 0; i < data.Length; i += 8) BitConverter.TryWriteBytes(data.AsSpan(i), (ulong)i * 0x9E3779B97F4A7C15UL);
Stage("write pattern", () => disk.Write(0, data));
var back = Stage("read pattern back", () => disk.Read(0, data.Length));
Expect(back.AsSpan().SequenceEqual(data), "the pattern reads back identical");
Expect(disk.BlockDevice.Disk[..data.Length].SequenceEqual(data), "the RAM disk holds exactly the pattern");
disk.Flush();
Expect(disk.GetId() == "vdpa_blk_sim", "GET_ID returns the device's serial");

// 2. Throughput.
disk.Benchmark(false, 4096, Math.Min(total.Bytes, 4L << 20));   // warm up
var results = new List<BlockResult>();
foreach (var size in new[] { 4 << 10, 64 << 10 })
    foreach (var write in new[] { true, false })
        results.Add(Stage($"{(write ? "write" : "read")} {size >> 10} KiB × {depth}", () => disk.Benchmark(write, size, total.Bytes)));
foreach (var r in results)
{
    Show(r);
    Result($"blk.{r.Operation}.{r.RequestBytes >> 10}KiB.MiBps", Math.Round(r.MiBPerSecond, 1));
    Result($"blk.{r.Operation}.{r.RequestBytes >> 10}KiB.iops", Math.Round(r.RequestsPerSecond));
}
Expect(disk.Device.Counters.ErrorTotal == 0 && disk.BlockDevice.IoErrors == 0, "no device errors, no I/O errors");

// 3. Ceiling: the SDK virtqueue alone, one request = header + data + status, copied by the "device".
var ceilingSlot = vm.AddSlot(8.MiB());
double Ceiling(int requestBytes, long bytes)
{
    var slot = ceilingSlot;
    {
        var ring = SplitRing.Contiguous(slot.Gpa, 128);
        var features = VirtioFeatures.Version1 | VirtioFeatures.EventIdx;
        var drv = new SplitQueueDriver(vm.PhysicalSpace, ring, features);
        var dev = new SplitQueueDevice(vm.PhysicalSpace, ring, features);
        var buf = new byte[requestBytes];
        ulong hdr = slot.Gpa + 0x10000, dat = slot.Gpa + 0x20000, st = slot.Gpa + 0x18000;
        long requests = Math.Max(1, bytes / requestBytes), done = 0;
        var sw = Stopwatch.StartNew();
        while (done < requests)
        {
            for (int i = 0; i < depth; i++)
                drv.Add([new VirtqBuffer(hdr + (ulong)(i * 16), 16)], [new VirtqBuffer(dat + (ulong)i * 65536, (uint)requestBytes), new VirtqBuffer(st + (ulong)i, 1)], (ulong)i);
            drv.Publish();
            while (dev.TryPop(out var c)) { c.WriteWritable(0, buf); dev.Push(c, (uint)requestBytes + 1); }
            dev.Flush();
            while (drv.TryGetUsed(out _)) done++;
        }
        return requests * (double)requestBytes / sw.Elapsed.TotalSeconds / (1 << 20);
    }
}
foreach (var size in new[] { 4 << 10, 64 << 10 })
{
    Ceiling(size, 4L << 20);
    var mibps = Stage($"ceiling: SDK virtqueue alone, {size >> 10} KiB", () => Ceiling(size, total.Bytes));
    Result($"ceiling.virtqueue.{size >> 10}KiB.MiBps", Math.Round(mibps, 1));
    Console.WriteLine($"{size >> 10} KiB: read {results.First(r => !r.Operation.StartsWith("w") && r.RequestBytes == size).MiBPerSecond:F0} MiB/s through vhost-vdpa; the virtqueue alone {mibps:F0} MiB/s");
}

vm.Dispose();
