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
    ImmutableArray<MemSlot> seenSlots;
    long generation;
    readonly object genLock = new();

    internal GuestPhysicalSpace(Vm vm) : base(vm, "gpa") => seenSlots = vm.SlotsSnapshot;

    /// <inheritdoc/>
    public override long Generation
    {
        get
        {
            var now = Vm.SlotsSnapshot;
            if (now == seenSlots) return Volatile.Read(ref generation);
            lock (genLock)
            {
                if (now != seenSlots)
                {
                    seenSlots = now;
                    generation++;
                }
                return generation;
            }
        }
    }

    /// <inheritdoc/>
    public override bool TryTranslate(ulong address, long length, MemoryAccess access, out ulong target, out long contiguous, out MemoryFault fault)
    {
        target = address;
        if (GuestHostAccess.TryFindSlot(Vm, address, out var slot))
        {
            contiguous = (long)Math.Min((ulong)Math.Max(length, 1), slot.EndGpa - address);
            fault = default;
            return true;
        }
        contiguous = 0;
        return Fault(out fault, address, address, length, access, Vm.IsDisposed ? MemoryFaultReason.Disposed : MemoryFaultReason.Unmapped);
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    internal override bool TryResolveHost(ulong address, long length, MemoryAccess access, out nint host, out long contiguous, out MemoryFault fault)
    {
        var r = GuestHostAccess.TryResolve(Vm, address, length, out host, out contiguous);
        if (r == MemoryFaultReason.None) { fault = default; return true; }
        return Fault(out fault, address, address, length, access, r);
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

/// <summary>
/// The one place where the SDK's device-side code (address spaces, virtqueues) turns a gpa into host memory, under
/// <see cref="GuestMemory"/>'s rules (its bounds checks and its teardown guard). Never throws for a bad gpa: it answers
/// with a fault reason instead, so a hostile driver's address cannot raise an exception on a device thread.
/// </summary>
internal static class GuestHostAccess
{
    /// <summary>The memslot containing <paramref name="gpa"/>, without throwing.</summary>
    public static bool TryFindSlot(Vm vm, ulong gpa, out MemSlot slot)
    {
        slot = vm.FindSlotAt(gpa)!;
        return slot is not null && !vm.IsDisposed;
    }

    /// <summary>
    /// Host address of <paramref name="gpa"/> and how many bytes from it (≤ <paramref name="length"/>, ≥ 1) lie in the
    /// same memslot; <see cref="MemoryFaultReason.None"/> on success.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)] // hot path: full optimisation at once, not after tiering
    public static MemoryFaultReason TryResolve(Vm vm, ulong gpa, long length, out nint host, out long contiguous)
    {
        host = 0;
        contiguous = 0;
        // A miss is answered here, without an exception: a hostile driver's addresses must cost no more than good ones.
        var s = vm.FindSlotAt(gpa);
        if (s is null) return vm.IsDisposed ? MemoryFaultReason.Disposed : MemoryFaultReason.Unmapped;
        var n = (long)Math.Min((ulong)Math.Max(length, 1), s.EndGpa - gpa);
        // The slot found above, re-checked live under the teardown guard (GuestMemory's rule), without a second lookup.
        if (!vm.Memory.TryHostAddress(s, gpa, out host)) return vm.IsDisposed ? MemoryFaultReason.Disposed : MemoryFaultReason.Unmapped;
        contiguous = n;
        return MemoryFaultReason.None;
    }
}
