using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Rendering;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

public class VmDeviceTests
{
    sealed class Probe(string name, List<string> log) : VmDevice(name)
    {
        public bool MemoryWasThereAtDispose;
        ulong gpa;

        protected override void OnAttach(Vm vm)
        {
            log.Add($"attach {Name}");
            gpa = vm.TestSlot.Gpa;
        }

        protected override void Dispose(bool disposing)
        {
            // A device thread stopping now may still touch guest memory: the slots must still be mapped.
            MemoryWasThereAtDispose = Vm!.SlotsSnapshot.Length > 0 && Vm.TestSlot.Mapping.Address != 0;
            log.Add($"dispose {Name}");
        }

        public override string Summary => $"at 0x{gpa:x}";
    }

    sealed class Failing() : VmDevice("bad")
    {
        protected override void OnAttach(Vm vm) => throw new InvalidOperationException("no such device");
    }

    [Fact]
    public void Attach_lists_and_disposes_devices_first_last_attached_first()
    {
        var log = new List<string>();
        var vm = Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Sim });
        var a = vm.Attach(new Probe("balloon", log));
        var b = vm.Attach(new Probe("vdpa-net0", log));
        Assert.Same(vm, a.Vm);
        Assert.Equal([a, b], vm.Devices);
        var table = Render.Text(vm.ToRenderable());
        Assert.Contains("devices", table);
        Assert.Contains("vdpa-net0", table);
        Assert.Contains($"at 0x{vm.TestSlot.Gpa:x}", table);

        Assert.Contains("already attached to this VM", Assert.Throws<InvalidOperationException>(() => vm.Attach(a)).Message);
        using var other = Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Sim });
        Assert.Contains("another VM", Assert.Throws<InvalidOperationException>(() => other.Attach(a)).Message);

        vm.Dispose();
        Assert.Equal(["attach balloon", "attach vdpa-net0", "dispose vdpa-net0", "dispose balloon"], log);
        Assert.True(a.IsDisposed && b.IsDisposed);
        Assert.True(a.MemoryWasThereAtDispose && b.MemoryWasThereAtDispose);
        Assert.Throws<ObjectDisposedException>(() => vm.Attach(new Probe("late", log)));
    }

    [Fact]
    public void A_device_that_fails_to_attach_is_not_listed()
    {
        using var vm = Vm.Create(new VmOptions(2.MiB()) { Backend = Backend.Sim });
        var d = new Failing();
        Assert.Throws<InvalidOperationException>(() => vm.Attach(d));
        Assert.Empty(vm.Devices);
        Assert.False(d.IsAttached);
    }
}
