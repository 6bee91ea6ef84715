using System.Globalization;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Rendering;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>What `virtlab doctor` reports about hugetlb is what /sys and /proc say (reserved = resv_hugepages = HugePages_Rsvd).</summary>
public class HostProbeTests
{
    static long Sys(string dir, string file) => long.Parse(File.ReadAllText(Path.Combine(dir, file)).Trim(), CultureInfo.InvariantCulture);

    static long Meminfo(string key) => File.ReadLines("/proc/meminfo").Where(l => l.StartsWith(key + ":"))
        .Select(l => long.Parse(l[(key.Length + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture)).Single();

    [Fact]
    public void Doctor_hugetlb_pools_match_sysfs_and_meminfo()
    {
        var dirs = Directory.Exists("/sys/kernel/mm/hugepages") ? Directory.GetDirectories("/sys/kernel/mm/hugepages", "hugepages-*kB") : [];
        var pools = KvmSystem.ProbeNow().HugePages;
        Assert.Equal(dirs.Length, pools.Count);
        foreach (var dir in dirs)
        {
            var kb = long.Parse(Path.GetFileName(dir)["hugepages-".Length..^2], CultureInfo.InvariantCulture);
            var p = Assert.Single(pools, p => p.PageSize == kb * 1024);
            Assert.Equal(Sys(dir, "nr_hugepages"), p.Total);
            Assert.Equal(Sys(dir, "free_hugepages"), p.Free);
            Assert.Equal(Sys(dir, "resv_hugepages"), p.Reserved);
            Assert.Equal(Sys(dir, "surplus_hugepages"), p.Surplus);
            if (kb == Meminfo("Hugepagesize"))
            {
                // The default size is also in /proc/meminfo: reserved is HugePages_Rsvd, not the pool's total.
                Assert.Equal(Meminfo("HugePages_Total"), p.Total);
                Assert.Equal(Meminfo("HugePages_Rsvd"), p.Reserved);
                Assert.Equal(Meminfo("HugePages_Free"), p.Free);
            }
        }
        var shown = VirtLab.Sdk.Tests.Render.Text(KvmSystem.ProbeNow().ToRenderable());
        foreach (var p in pools)
            Assert.Contains($"total {p.Total}, free {p.Free}, reserved {p.Reserved}, surplus {p.Surplus}", shown);
    }
}
