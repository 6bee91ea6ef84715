using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>GuestMemory's host ranges: translate without exceptions, discard and hint through them.</summary>
public class HostRangeTests
{
    [Fact]
    public void Translate_discard_and_hint_stay_inside_one_slot()
    {
        using var vm = Vm.Create(new VmOptions(4.MiB()) { Backend = Backend.Sim, TestSlotGpa = 1UL << 32 });
        var slot = vm.TestSlot;
        vm.Memory.Populate(slot.Gpa, slot.Size);
        Assert.True(vm.Memory.TryTranslate(slot.Gpa + 8192, 8192, out var r));
        Assert.Equal(slot, r.Slot);
        Assert.Equal(slot.HostAddress + 8192, r.HostAddress);
        Assert.False(vm.Memory.TryTranslate(slot.EndGpa - 4096, 8192, out _));   // runs past the slot
        Assert.False(vm.Memory.TryTranslate(slot.EndGpa, 4096, out _));          // no slot
        Assert.False(vm.Memory.TryTranslate(slot.Gpa, 0, out _));
        Assert.True(vm.Memory.TryTranslatePrefix(slot.EndGpa - 4096, 1 << 20, out var p));
        Assert.Equal(4096, p.Length);

        vm.Memory.Write(slot.Gpa + 8192, 0xabcdUL);
        var before = vm.Memory.Resident(slot.Gpa, slot.Size);
        vm.Memory.Discard(r);
        Assert.Equal(before - 8192, vm.Memory.Resident(slot.Gpa, slot.Size));
        Assert.Equal(0UL, vm.Memory.Read<ulong>(slot.Gpa + 8192));
        vm.Memory.WillNeed(r);
        vm.Memory.WillNeed(slot.Gpa, 4096);
        Assert.Throws<ArgumentOutOfRangeException>(() => vm.Memory.SlotRange(slot, slot.Size.Bytes - 4096, 8192));
        Assert.Throws<ArgumentException>(() => vm.Memory.Discard(vm.Memory.SlotRange(slot, 100, 4096))); // not page aligned
        Assert.Throws<ArgumentException>(() => vm.Memory.Discard(default(HostRange)));
    }
}
