using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>Bad input is refused with a message saying what was wrong and what is allowed — before any kernel call.</summary>
public class BadInputTests
{
    static Vm Sim(VmOptions o) => Vm.Create(o with { Backend = Backend.Sim });

    [Fact]
    public void Zero_and_unaligned_sizes()
    {
        var zero = Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(0.Bytes())));
        Assert.Contains("memory must be positive", zero.Message);
        var odd = Assert.Throws<ArgumentException>(() => Sim(new VmOptions(5000.Bytes())));
        Assert.Contains("not a multiple of the anonymous backing's page size 4 KiB", odd.Message);
        Assert.Contains("use 4 KiB or 8 KiB", odd.Message);
        var huge = Assert.Throws<ArgumentException>(() => Sim(new VmOptions(3.MiB()) { Backing = Backing.AnonymousHugetlb2M }));
        Assert.Contains("anonymous_hugetlb_2mb backing's page size 2 MiB", huge.Message);
        var thp = Assert.Throws<ArgumentException>(() => Sim(new VmOptions(1.MiB()) { Backing = Backing.AnonymousThp }));
        Assert.Contains("2 MiB", thp.Message);
    }

    [Fact]
    public void More_memory_than_the_host_has()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(64.TiB())));
        Assert.Contains("more than this host has", e.Message);
        Assert.Equal("Memory", e.ParamName);
        // One check for the whole guest: with a system slot the message adds it up, and still blames what is too big.
        var both = Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(64.TiB()) { SystemMemory = 4.MiB() }));
        Assert.Equal("Memory", both.ParamName);
        Assert.StartsWith("guest memory 64 TiB plus system memory 4 MiB is ", both.Message);
        using var vm = Sim(new VmOptions(1.MiB()));
        var add = Assert.Throws<ArgumentOutOfRangeException>(() => vm.AddSlot(64.TiB(), gpa: 1UL << 46));
        Assert.Contains("more than this host has", add.Message);
    }

    [Fact]
    public void Too_many_or_too_few_vcpus()
    {
        var many = Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(1.MiB()) { Vcpus = 5000 }));
        Assert.Contains("1 … 1024", many.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(1.MiB()) { Vcpus = 0 }));
    }

    [Fact]
    public void Dirty_log_option_combinations()
    {
        var init = Assert.Throws<ArgumentException>(() => Sim(new VmOptions(1.MiB()) { InitiallySet = true }));
        Assert.Contains("ManualProtect", init.Message);
        var ring = Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(1.MiB()) { DirtyRingBytes = 5000.Bytes() }));
        Assert.Contains("power of two", ring.Message);
        Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(1.MiB()) { DirtyRingBytes = 2048.Bytes() }));
        Assert.Throws<ArgumentOutOfRangeException>(() => Sim(new VmOptions(1.MiB()) { DirtyRingBytes = 2.MiB() }));
    }

    [Fact]
    public void Test_slot_gpa_must_be_aligned_and_clear_of_the_system_slot()
    {
        Assert.Throws<ArgumentException>(() => Sim(new VmOptions(2.MiB()) { Backing = Backing.AnonymousThp, TestSlotGpa = 1UL << 20 }));
        var e = Assert.Throws<ArgumentException>(() => Sim(new VmOptions(1.MiB()) { TestSlotGpa = 0 }));
        Assert.Contains("overlaps slot 0", e.Message);
        using var vm = Sim(new VmOptions(1.MiB()) { TestSlotGpa = 1UL << 32 });
        Assert.Equal(1UL << 32, vm.TestSlot.Gpa);
    }

    [Fact]
    public void Hugetlb_without_reservation_says_how_many_pages_and_how_to_reserve()
    {
        var pool = HostInfo.HugePages(2L << 20);
        if (pool.Available >= 2)
        {
            using var ok = Sim(new VmOptions(4.MiB()) { Backing = Backing.AnonymousHugetlb2M });
            Assert.Equal(2L << 20, ok.TestSlot.PageSize);
            return;
        }
        var e = Assert.Throws<InsufficientHugePagesException>(() => Sim(new VmOptions(4.MiB()) { Backing = Backing.AnonymousHugetlb2M }));
        Assert.Equal(2, e.Needed);
        Assert.Contains("needs 2 huge pages of 2 MiB", e.Message);
        Assert.Contains("echo ", e.Message);
        Assert.Contains("/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", e.Message);
    }

    [Fact]
    public void Bad_workloads()
    {
        using var vm = Sim(new VmOptions(1.MiB()));
        Assert.Contains("multiple of 8", Assert.Throws<ArgumentException>(() => vm.Plan(new Workload { Stride = 12 })).Message);
        Assert.Contains("inside their stride", Assert.Throws<ArgumentException>(() => vm.Plan(new Workload { Offset = 4096 })).Message);
        Assert.Throws<ArgumentException>(() => vm.Plan(new Workload { WritePercent = 101 }));
        Assert.Throws<ArgumentException>(() => vm.Plan(new Workload { Passes = 0 }));
        // Not an OutOfMemoryException from sizing the per-pass timings: a clear limit.
        Assert.Contains("passes must be 1 … 1,000,000", Assert.Throws<ArgumentException>(() => vm.Run(new Workload { Passes = int.MaxValue })).Message);
        vm.Plan(new Workload { Passes = Workload.MaxPasses });
        Assert.Throws<ArgumentException>(() => vm.Plan(new Workload { Slot = 9 }));
        Assert.Contains("inside system slot 0", Assert.Throws<ArgumentException>(() => vm.Plan(new Workload { Slot = 0 })).Message); // as on KVM
        Assert.Contains("at least one stride", Assert.Throws<ArgumentException>(() => vm.Plan(Workload.Write(stride: 3 << 20))).Message);
        Assert.Throws<ArgumentException>(() => vm.Plan(new Workload { Accesses = [StrideAccess.Read(0, 2, 4096)] }));
        // offsets and steps so large that their sum would wrap around to a small, in-stride end
        Assert.Contains("inside their stride", Assert.Throws<ArgumentException>(() =>
            vm.Plan(new Workload { Accesses = [StrideAccess.Write(0, 3, 1L << 62)] })).Message);
        Assert.Contains("inside their stride", Assert.Throws<ArgumentException>(() =>
            vm.Plan(new Workload { Offset = long.MaxValue - 7, Accesses = [StrideAccess.Write(long.MaxValue - 7)] })).Message);
    }

    [Fact]
    public void Guest_memory_discard_must_be_aligned_for_hugetlb_and_bounds_are_checked()
    {
        using var vm = Sim(new VmOptions(1.MiB()));
        var gpa = vm.TestSlot.Gpa;
        Assert.Throws<ArgumentException>(() => vm.Memory.Discard(gpa + 1, 4096));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Memory.Discard(gpa, 2.MiB()));
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Memory.Write(gpa - 4, 1UL)); // below the slot: a hole
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Memory.HostAddress(vm.TestSlot.EndGpa));
    }

    [Fact]
    public void Forcing_kvm_where_it_is_unusable_says_why()
    {
        if (Vm.IsKvmUsable(out _)) return;
        var e = Assert.Throws<BackendUnavailableException>(() => Vm.Create(new VmOptions(1.MiB()) { Backend = Backend.Kvm }));
        Assert.Contains("Backend.Sim", e.Message);
        Assert.Equal(Backend.Kvm, e.Backend);
        Assert.IsAssignableFrom<RequirementMissingException>(e); // virtlab run: exit 4, virtlab test: skipped
    }

    [Fact]
    public void Auto_picks_a_working_backend()
    {
        using var vm = Vm.Create(1.MiB());
        Assert.Equal(Vm.IsKvmUsable(out _) ? Backend.Kvm : Backend.Sim, vm.Backend);
    }

    [Fact]
    public void Backing_names_parse_like_the_selftests()
    {
        Assert.Equal(Backing.Anonymous, BackingInfo.Parse("anonymous"));
        Assert.Equal(Backing.AnonymousThp, BackingInfo.Parse("anonymous_thp"));
        Assert.Equal(Backing.AnonymousHugetlb2M, BackingInfo.Parse("anonymous_hugetlb"));
        Assert.Equal(Backing.AnonymousHugetlb2M, BackingInfo.Parse("anonymous_hugetlb_2mb"));
        Assert.Equal(Backing.AnonymousHugetlb1G, BackingInfo.Parse("anonymous_hugetlb_1gb"));
        Assert.Equal(Backing.Shmem, BackingInfo.Parse("shmem"));
        Assert.Equal(Backing.SharedHugetlb, BackingInfo.Parse("shared_hugetlb"));
        var e = Assert.Throws<FormatException>(() => BackingInfo.Parse("bogus"));
        Assert.Contains("anonymous_thp", e.Message);
        foreach (var b in Enum.GetValues<Backing>()) Assert.Equal(b, BackingInfo.Parse(b.Name()));
        Assert.Equal(1L << 30, Backing.AnonymousHugetlb1G.PageSize());
        Assert.Equal(4096, Backing.Shmem.PageSize());
    }

    [Theory]
    [InlineData(Backing.Anonymous)]
    [InlineData(Backing.AnonymousThp)]
    [InlineData(Backing.Shmem)]
    public void Non_hugetlb_backings_map_discard_and_measure(Backing backing)
    {
        using var vm = Sim(new VmOptions(4.MiB()) { Backing = backing, LogDirtyPages = true });
        var s = vm.TestSlot;
        Assert.Equal(0, s.HostAddress % s.PageSize);
        vm.Run(Workload.Write());
        Assert.Equal(1024, s.GetDirtyLog().Count);
        Assert.Equal(4.MiB(), vm.Memory.Resident(s.Gpa, 4.MiB()));
        vm.Memory.Discard(s.Gpa, 4.MiB());
        Assert.Equal(0, vm.Memory.Resident(s.Gpa, 4.MiB()).Bytes);
        Assert.Equal(0UL, vm.Memory.Read<ulong>(s.Gpa)); // (maps the zero page)
    }
}
