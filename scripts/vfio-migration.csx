// vfio-migration.csx — live migration of a VM whose mediated device DMA-writes guest memory on its own thread while
// the vCPUs run. Pre-copy rounds copy the dirty pages to a destination buffer, the dirty set being the KVM (or Sim)
// dirty log of the memslot OR'ed with the VFIO type1 dirty bitmap of the IOVA range that maps it; when a round's set
// is small (or after --max-rounds; each round lasts as long as --bandwidth takes to send its pages) the VM and the device stop and the last set is copied (stop-and-copy: the downtime).
// The destination must then equal the source byte for byte. With --vfio-tracking off the VFIO bitmap is not asked:
// the pages only the device wrote after they were copied are lost, and the recipe lists them.
//
//   ./virtlab run scripts/vfio-migration.csx -- --memory 256M --dma-rate 20000 --vfio-tracking both

using System.Diagnostics;
using VirtLab.Plugins.Vfio.Devices;
using VirtLab.Plugins.Vfio.Type1;

var memory     = Arg("memory", 64.MiB(), test: 8.MiB());
var backend    = Arg("backend", Backend.Auto);
var dmaRate    = Arg("dma-rate", 20000.0, test: 4000.0);   // DMA writes per second (each 4 KiB)
var guestPasses = Arg("guest-passes", 4, test: 2);
var maxRounds  = Arg("max-rounds", 12, test: 6);
var threshold  = Arg("threshold-pages", 32, test: 16);
var tracking   = Arg("vfio-tracking", "both");             // on | off | both
var bandwidth  = Arg("bandwidth", 1.GiB(), test: 256.MiB());   // migration link, per second: a round lasts as long as its pages take to send
var seed       = Arg("seed", 1);
if (tracking is not ("on" or "off" or "both")) throw new ArgumentException($"--vfio-tracking must be on, off or both; got {tracking}");

const long PageBytes = 4096;

foreach (var on in tracking == "both" ? new[] { true, false } : new[] { tracking == "on" })
{
    var tag = on ? "on" : "off";
    using var vm = Vm.Create(new VmOptions(memory) { Backend = backend });
    var slot = vm.TestSlot;
    var pages = slot.Pages;
    var size = (ulong)slot.Size.Bytes;

    // the device: a mediated device whose container maps the whole test slot at IOVA 0 (QEMU maps RAM 1:1)
    using var c = Vfio.Container(vm);
    var group = VfioGroup.Emulated("mdev0");
    c.AddGroup(group);
    c.SetIommu();
    c.MapGuestRam(0, slot.Gpa, size);
    var mdev = vm.Attach(new MediatedDevice(c, "mdev0", group));
    // its DMA buffers: the upper half; the guest works in the lower half (so lost DMA pages are not re-sent by KVM)
    var traffic = new DmaTraffic(size / 2, size / 2) { Pattern = DmaPatternKind.Random, Seed = seed };

    slot.LogDirtyPages = true;
    if (on) c.StartDirtyTracking();

    var cts = new CancellationTokenSource();
    var guestWork = Workload.Write(stride: PageBytes, passes: guestPasses).In(slot.Gpa, (long)size / 2);
    var guest = Task.Run(() => { try { vm.Run(guestWork, cancellation: cts.Token); } catch (OperationCanceledException) { } });
    mdev.Start(traffic, dmaRate);

    var dst = new byte[size];
    long sent = 0;
    void Copy(DirtyBitmap set)
    {
        foreach (var run in set.Runs)
        {
            vm.Memory.Read(slot.Gpa + (ulong)(run.First * PageBytes), dst.AsSpan((int)(run.First * PageBytes), (int)(run.Count * PageBytes)));
            sent += run.Count;
        }
        Thread.Sleep(TimeSpan.FromSeconds((double)set.Count * PageBytes / bandwidth.Bytes));   // the link is busy meanwhile
    }
    DirtyBitmap Harvest()
    {
        var set = slot.GetDirtyLog();                          // KVM_GET_DIRTY_LOG: returns and re-protects
        if (on) set.Or(c.GetDirtyBitmap(0, size));             // VFIO_IOMMU_DIRTY_PAGES GET_BITMAP, IOVA 0 = slot page 0
        return set;
    }

    // round 0: everything; then the pages dirtied since, until the set is small
    var perRound = new List<long>();
    Stage($"tracking {tag}: round 0 (all {pages} pages)", () =>
    {
        var all = new DirtyBitmap(pages);
        all.SetRange(0, pages);
        Copy(all);
        perRound.Add(pages);
    });
    mdev.Burst(traffic, 16);                                   // some DMA is certain to land after its page was sent
    for (var round = 1; round <= maxRounds; round++)
    {
        var set = Stage($"tracking {tag}: pre-copy round {round}", () => { var s = Harvest(); Copy(s); return s; });
        perRound.Add(set.Count);
        if (set.Count <= threshold) break;
    }

    // stop-and-copy: quiesce the device, pause the vCPUs, send the last set
    var sw = Stopwatch.StartNew();
    mdev.Stop();
    cts.Cancel();
    guest.Wait();
    var last = Harvest();
    Copy(last);
    var downtime = sw.Elapsed;

    // compare byte for byte
    var src = new byte[size];
    vm.Memory.Read(slot.Gpa, src);
    var lost = new List<long>();
    for (long p = 0; p < pages; p++)
        if (!src.AsSpan((int)(p * PageBytes), (int)PageBytes).SequenceEqual(dst.AsSpan((int)(p * PageBytes), (int)PageBytes))) lost.Add(p);

    Console.WriteLine($"VFIO tracking {tag}: {perRound.Count - 1} pre-copy rounds, pages per round [{string.Join(", ", perRound)}], " +
                      $"downtime set {last.Count} pages ({new Size(last.Count * PageBytes)}) in {downtime.TotalMilliseconds:F1} ms, " +
                      $"{new Size(sent * PageBytes)} sent; device {mdev.Writes} DMA writes, {mdev.Faults} faults; {lost.Count} pages differ");
    if (lost.Count > 0)
        Console.WriteLine($"  lost pages (gpa): {string.Join(", ", lost.Take(12).Select(p => $"0x{slot.Gpa + (ulong)(p * PageBytes):x}"))}{(lost.Count > 12 ? $", … {lost.Count - 12} more" : "")}");
    Result($"tracking_{tag}", new Dictionary<string, object>
    {
        ["backend"] = vm.Backend.ToString(),
        ["rounds"] = perRound.Count - 1,
        ["pages_per_round"] = perRound,
        ["downtime_pages"] = last.Count,
        ["downtime_bytes"] = last.Count * PageBytes,
        ["downtime_ms"] = downtime.TotalMilliseconds,
        ["sent_bytes"] = sent * PageBytes,
        ["dma_writes"] = mdev.Writes,
        ["lost_pages"] = lost.Count,
        ["lost_gpas"] = lost.Take(64).Select(p => slot.Gpa + (ulong)(p * PageBytes)).ToArray(),
    });
    Expect(mdev.Faults == 0, $"tracking {tag}: every DMA write reached guest memory (faults: {mdev.Faults}, {mdev.LastFault})");
    if (on) Expect(lost.Count == 0, "with VFIO dirty tracking the destination equals the source byte for byte");
    else
    {
        Expect(lost.Count > 0, "without VFIO dirty tracking some DMA-written pages are lost");
        Expect(lost.All(p => p >= pages / 2), "every lost page lies in the device's DMA region (the KVM log saw all guest writes)");
    }
}
