using System.Diagnostics;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;
using Xunit;
using Xunit.Abstractions;
namespace VirtLab.Sdk.Tests.Kvm;
[Collection("KVM")]
public unsafe class ZzProbeTmp(ITestOutputHelper o)
{
    [KvmFact]
    public void Probe()
    {
        using var vm = Vm.Create(new VmOptions(1.GiB()) { Backend = Backend.Kvm, ManualProtect = true, LogDirtyPages = true });
        var k = (KvmVm)vm; var m = k.Machine; var slot = vm.TestSlot; var bm = new DirtyBitmap(slot.Pages);
        int fd = m.VmFd; var req = KvmIoctl.KVM_GET_DIRTY_LOG;
        var a = new List<long>(); var b = new List<long>(); var c = new List<long>();
        fixed (ulong* p = bm.Words)
        {
            var log = new kvm_dirty_log { slot = 1, dirty_bitmap = (ulong)p };
            for (int i = 0; i < 300000; i++)
            {
                for (int r = 0; r < 3; r++)
                {
                    int which = (i + r) % 3;
                    long t0 = Stopwatch.GetTimestamp();
                    if (which == 0) Libc.ioctl(fd, req, &log); else if (which == 1) m.GetDirtyLog(1, p); else slot.GetDirtyLog(bm);
                    long d = Stopwatch.GetTimestamp() - t0;
                    (which == 0 ? a : which == 1 ? b : c).Add(d);
                }
            }
        }
        a.Sort(); b.Sort(); c.Sort();
        o.WriteLine($"raw {a[a.Count / 2]} machine {b[b.Count / 2]} harness {c[c.Count / 2]} ns (p50)");
    }
}
