using System.Runtime.CompilerServices;
using System.Collections.Immutable;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// The VM's guest-physical address space as a device without an IOMMU sees it: address = gpa, mapped where a memslot
/// is (read/write: memslots here are never KVM_MEM_READONLY). Get it from <see cref="Vm.PhysicalSpace"/>.
/// An access that runs from one memslot into an adjacent one works (each piece is resolved in its own slot).
/// </summary>
public sealed class GuestPhysicalSpace : AddressSpace
{
    // Generation: bumped when the VM's memslot snapshot (an immutable array, replaced on every change) is a new one.
    ImmutableArray<MemSlot> _seenSlots;
    long _generation;
    readonly object _genLock = new();

    internal GuestPhysicalSpace(Vm vm) : base(vm, "gpa") => _seenSlots = vm.SlotsSnapshot;

    /// <inheritdoc/>
    public override long Generation
    {
        get
        {
            var now = Vm.SlotsSnapshot;
            if (now == _seenSlots) return Volatile.Read(ref _generation);
            lock (_genLock)
            {
                if (now != _seenSlots)
                {
                    _seenSlots = now;
                    _generation++;
                }
                return _generation;
            }
        }
    }

    /// <inheritdoc/>
    public override bool TryTranslate(ulong address, long length, MemoryAccess access, out ulong target, out long contiguous, out MemoryFault fault)
    {
        target = address;
        if (Vm.FindSlotAt(address) is { } slot && !Vm.IsDisposed)
        {
            contiguous = (long)Math.Min((ulong)Math.Max(length, 1), slot.EndGpa - address);
            fault = default;
            return true;
        }
        contiguous = 0;
        return Fault(out fault, address, address, length, access, Vm.IsDisposed ? MemoryFaultReason.Disposed : MemoryFaultReason.Unmapped);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    internal override bool TryResolveExtent(ulong address, long length, MemoryAccess access, out HostExtent extent, out MemoryFault fault)
    {
        // A miss is answered here, without an exception: a hostile driver's addresses must cost no more than good ones.
        // No guard is needed to look: whoever touches the bytes holds SlotGuard on the slot and re-checks Removed.
        var s = Vm.FindSlotAt(address);
        if (s is null || s.Removed || Vm.IsDisposed)
        {
            extent = default;
            return Fault(out fault, address, address, length, access, Vm.IsDisposed ? MemoryFaultReason.Disposed : MemoryFaultReason.Unmapped);
        }
        extent = new HostExtent(s.Gpa, s.EndGpa - 1, s.Mapping.Address, s, MemoryAccess.ReadWrite);
        fault = default;
        return true;
    }

    /// <summary>
    /// The gpa whose host bytes are at host virtual address <paramref name="hva"/> (vhost messages carry a <c>uaddr</c>:
    /// a userspace address inside some memslot's mapping). False when no memslot's mapping contains it.
    /// </summary>
    public bool TryGpaOfHostAddress(ulong hva, out ulong gpa)
    {
        foreach (var s in Vm.SlotsSnapshot)
        {
            var start = (ulong)s.HostAddress;
            if (hva >= start && hva - start < (ulong)s.Mapping.Length)
            {
                gpa = s.Gpa + (hva - start);
                return true;
            }
        }
        gpa = 0;
        return false;
    }

    /// <inheritdoc/>
    public override string ToString() => $"guest-physical space of {Vm}";
}
