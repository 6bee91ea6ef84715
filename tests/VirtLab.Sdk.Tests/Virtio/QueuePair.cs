using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Virtio;

namespace VirtLab.Sdk.Tests.Virtio;

/// <summary>
/// A simulator VM with a driver and a device queue on one ring in its test slot, plus a buffer area:
/// the ring at the slot's start, indirect tables after it, data buffers from <see cref="Buffers"/> on.
/// </summary>
sealed class QueuePair : IDisposable
{
    public readonly Vm Vm;
    public readonly SplitRing Ring;
    public readonly SplitQueueDriver Driver;
    public readonly SplitQueueDevice Device;
    public readonly EventNotifier Kick = new("kick"), Call = new("call");
    public readonly ulong Buffers;

    public QueuePair(int size, VirtioFeatures features, int indirectEntries = 0, Size? memory = null)
    {
        Vm = Vm.Create(new VmOptions(memory ?? 16.MiB()) { Backend = Backend.Sim });
        var gpa = Vm.TestSlot.Gpa;
        Ring = SplitRing.Contiguous(gpa, size);
        var ia = (ulong)((SplitRing.ContiguousBytes(size) + 4095) & ~4095L) + gpa;
        IndirectArea? indirect = indirectEntries > 0 ? new IndirectArea(ia, indirectEntries) : null;
        Buffers = ia + (ulong)((indirect?.Bytes(size) ?? 0) + 4095 & ~4095L);
        Driver = new SplitQueueDriver(Vm.PhysicalSpace, Ring, features, Kick, indirect, "vq0");
        Device = new SplitQueueDevice(Vm.PhysicalSpace, Ring, features, Call, "vq0");
    }

    public GuestPhysicalSpace Space => Vm.PhysicalSpace;

    public void Dispose()
    {
        Kick.Dispose();
        Call.Dispose();
        Vm.Dispose();
    }
}
