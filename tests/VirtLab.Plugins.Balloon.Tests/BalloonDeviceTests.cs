using VirtLab.Plugins.Balloon.Guest;
using VirtLab.Plugins.Balloon.Host;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Plugins.Balloon.Tests;

/// <summary>The device and its guest driver end to end: separate threads, virtqueues in guest memory, real discards.</summary>
public class BalloonDeviceTests
{
    static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    static (Vm vm, BalloonDevice b) Attach(BalloonTransport transport, Backing backing = Backing.Anonymous, Size? memory = null, AllocationMode allocation = AllocationMode.Auto)
    {
        var vm = DiscardEngineTests.SimVm(memory ?? 32.MiB(), backing);
        vm.Memory.Populate(vm.TestSlot.Gpa, vm.TestSlot.Size);
        var b = vm.Attach(new BalloonDevice(new BalloonOptions { Transport = transport, Allocation = allocation }));
        return (vm, b);
    }

    [Theory]
    [InlineData(BalloonTransport.Pfn)]
    [InlineData(BalloonTransport.Bitmap)]
    [InlineData(BalloonTransport.Ranges)]
    public void Inflate_then_deflate_returns_the_same_pages_and_actual_tracks(BalloonTransport transport)
    {
        var (vm, b) = Attach(transport);
        using (vm)
        {
            var free = b.GuestFree;
            var op = b.Inflate(8.MiB(), timeout: Timeout);
            Assert.Null(op.Note);
            Assert.Equal(2048, op.Pages);
            Assert.Equal(8.MiB(), b.Actual);
            Assert.Equal(8.MiB(), b.Target);
            var inflated = b.DriverPages.ToArray();
            Assert.Equal(inflated, b.DevicePages);
            Assert.Equal(free - 8.MiB(), b.GuestFree);
            Assert.InRange(op.ResidentDrop.Bytes, 8.MiB().Bytes, 8.MiB().Bytes);
            Assert.True(op.Requests >= (transport == BalloonTransport.Pfn ? 8 : 1));

            var half = b.Deflate(3.MiB(), timeout: Timeout);
            Assert.Equal(768, half.Pages);
            Assert.Equal(5.MiB(), b.Actual);
            var rest = b.DevicePages.ToArray();
            Assert.Equal(rest, b.DriverPages);
            Assert.Subset(inflated.ToHashSet(), rest.ToHashSet());

            b.Deflate(5.MiB(), timeout: Timeout);
            Assert.Equal(0, b.Actual.Bytes);
            Assert.Empty(b.DevicePages);
            Assert.Equal(free, b.GuestFree); // every page went back to the guest's allocator
            Assert.Equal(0, b.VerifyGuestHeld());
            Assert.Empty(b.Errors);
        }
    }

    [Fact]
    public void Three_transports_take_identical_page_sets()
    {
        var sets = new List<long[]>();
        foreach (var t in new[] { BalloonTransport.Pfn, BalloonTransport.Bitmap, BalloonTransport.Ranges })
        {
            var (vm, b) = Attach(t, allocation: AllocationMode.SinglePages);
            using (vm)
            {
                b.Inflate(5.MiB() + 12.KiB(), timeout: Timeout);
                sets.Add(b.DevicePages.ToArray());
                Assert.Equal(sets[^1], b.DriverPages);
            }
        }
        Assert.Equal(1283, sets[0].Length);
        Assert.Equal(sets[0], sets[1]);
        Assert.Equal(sets[0], sets[2]);
    }

    [Theory]
    [InlineData(Backing.Anonymous, BalloonTransport.Bitmap)]
    [InlineData(Backing.AnonymousThp, BalloonTransport.Bitmap)]
    [InlineData(Backing.AnonymousThp, BalloonTransport.Pfn)]
    [InlineData(Backing.Shmem, BalloonTransport.Ranges)]
    public void Resident_memory_drops_by_about_the_inflated_size(Backing backing, BalloonTransport transport)
    {
        var (vm, b) = Attach(transport, backing, 64.MiB());
        using (vm)
        {
            var op = b.Inflate(40.MiB(), timeout: Timeout);
            Assert.Equal(40.MiB(), op.Moved);
            // Huge backings keep partial 2 MiB pages at the edges of what the balloon took: at most two.
            Assert.InRange(op.ResidentDrop.Bytes, 40.MiB().Bytes - 2 * 2.MiB().Bytes, 40.MiB().Bytes);
            Assert.Equal(0, b.VerifyGuestHeld());
        }
    }

    [Fact]
    public void Stats_report_the_guest_allocator()
    {
        var (vm, b) = Attach(BalloonTransport.Bitmap);
        using (vm)
        {
            b.Inflate(4.MiB(), timeout: Timeout);
            var s = b.RequestStats();
            Assert.True(s.Updates >= 2); // the first buffer at probe, then this request
            Assert.Equal(b.GuestRam, s.TotalMemory);
            Assert.Equal(b.GuestFree, s.FreeMemory);
            Assert.Equal(0, s.UnknownTags);
        }
    }

    [Fact]
    public void The_guest_takes_pages_back_on_oom_and_reports_free_pages()
    {
        var (vm, b) = Attach(BalloonTransport.Pfn, memory: 16.MiB());
        using (vm)
        {
            var free = b.GuestFree;
            b.Inflate(free - 2.MiB(), timeout: Timeout);
            var got = b.GuestAllocate(3.MiB()); // 1 MiB more than is free: the OOM notifier deflates
            Assert.Equal(3.MiB(), got);
            Assert.True(b.OomDeflations >= 1);
            Assert.True(b.Actual < free - 2.MiB());
            Assert.Equal(b.DevicePages, b.DriverPages);
            Assert.Equal(0, b.VerifyGuestHeld());
        }
        var (vm2, b2) = Attach(BalloonTransport.Bitmap, memory: 32.MiB());
        using (vm2)
        {
            var resident = b2.Resident;
            var reported = b2.ReportFreePages();
            Assert.True(reported >= 16.MiB(), $"reported {reported}");
            Assert.Equal(reported, b2.Reported);
            Assert.InRange(b2.Resident.Bytes, 0, resident.Bytes - reported.Bytes);
            Assert.Equal(0, b2.ReportFreePages().Bytes); // nothing new to report
            Assert.Equal(0, b2.VerifyGuestHeld());
        }
    }

    [Fact]
    public void Periodic_free_page_reporting_discards_free_memory_on_its_own()
    {
        using var vm = DiscardEngineTests.SimVm(32.MiB());
        vm.Memory.Populate(vm.TestSlot.Gpa, vm.TestSlot.Size);
        var b = vm.Attach(new BalloonDevice(new BalloonOptions { ReportingInterval = TimeSpan.FromMilliseconds(50) }));
        var sw = System.Diagnostics.Stopwatch.StartNew();
        while (b.Reported < 16.MiB() && sw.Elapsed < Timeout) Thread.Sleep(20);
        Assert.True(b.Reported >= 16.MiB(), $"reported {b.Reported}");
        Assert.True(b.Resident <= vm.Memory.Size - 16.MiB());
        Assert.Equal(0, b.VerifyGuestHeld());
    }

    [Fact]
    public void Switching_transport_renegotiates_an_empty_balloon()
    {
        var (vm, b) = Attach(BalloonTransport.Pfn);
        using (vm)
        {
            b.Inflate(1.MiB(), timeout: Timeout);
            Assert.Throws<InvalidOperationException>(() => b.Transport = BalloonTransport.Ranges);
            b.Deflate(1.MiB(), timeout: Timeout);
            var free = b.GuestFree;
            var op = b.Inflate(2.MiB(), BalloonTransport.Ranges, timeout: Timeout);
            Assert.Equal(BalloonTransport.Ranges, op.Transport);
            Assert.Contains("PAGE_RANGES", b.Features);
            Assert.Equal(free - 2.MiB(), b.GuestFree); // the old driver's rings went back, the new one's came out
        }
    }

    [Fact]
    public void Pfn_arrays_refuse_a_vm_whose_ram_is_above_16_tib()
    {
        using var vm = Vm.Create(new VmOptions(8.MiB()) { Backend = Backend.Sim });
        if (vm.TestSlot.EndGpa <= 1UL << 44) return; // a host with a small physical address width puts the slot low
        var e = Assert.Throws<ArgumentException>(() => vm.Attach(new BalloonDevice(new BalloonOptions { Transport = BalloonTransport.Pfn })));
        Assert.Contains("testSlotGpa", e.Message);
        var b = vm.Attach(new BalloonDevice()); // no transport asked for: the page bitmap, whose PFNs are 52 bits
        Assert.Equal(BalloonTransport.Bitmap, b.Transport);
        Assert.Equal(1.MiB(), b.Inflate(1.MiB(), timeout: Timeout).Moved);
    }
}
