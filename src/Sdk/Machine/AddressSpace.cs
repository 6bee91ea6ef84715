using System.Runtime.CompilerServices;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// A kind of access, and a mapping's permission. The values are vhost's <c>VHOST_ACCESS_RO</c> (1), <c>_WO</c> (2) and
/// <c>_RW</c> (3), so an IOTLB message's perm converts directly.
/// </summary>
[Flags]
public enum MemoryAccess : byte
{
    /// <summary>No access.</summary>
    None = 0,
    /// <summary>A read (DMA to the device, a load).</summary>
    Read = 1,
    /// <summary>A write (DMA from the device, a store).</summary>
    Write = 2,
    /// <summary>Both (an access that reads and writes).</summary>
    ReadWrite = Read | Write,
}

/// <summary>Why an access faulted.</summary>
public enum MemoryFaultReason : byte
{
    /// <summary>No fault.</summary>
    None = 0,
    /// <summary>No mapping (IOTLB entry, memslot) covers the address: an IOTLB miss, or a gpa outside every memslot.</summary>
    Unmapped = 1,
    /// <summary>A mapping covers the address but does not allow this kind of access (e.g. a device write to an RO entry).</summary>
    Permission = 2,
    /// <summary>The range wraps around the end of the 64-bit address space (address + length overflows).</summary>
    Overflow = 3,
    /// <summary>The VM behind the space has been disposed (or the memslot removed while the access ran).</summary>
    Disposed = 4,
}

/// <summary>
/// A refused device access: which <see cref="Space"/> refused it, the first byte that could not be reached
/// (<see cref="Address"/>, in that space's own addresses), the access's full range in the space it was made in
/// (<see cref="RequestAddress"/>, <see cref="Length"/>), its kind and the reason. A fault in a lower space (an IOVA
/// mapping that points at a gpa outside every memslot) names the lower space.
/// </summary>
public readonly record struct MemoryFault(
    AddressSpace Space, ulong Address, ulong RequestAddress, long Length, MemoryAccess Access, MemoryFaultReason Reason)
{
    /// <summary>The errno the kernel reports for such a fault: EFAULT (vhost's <c>-EFAULT</c> on a translation failure), or EPERM for a permission fault.</summary>
    public int Errno => Reason == MemoryFaultReason.Permission ? Native.Errno.EPERM : Native.Errno.EFAULT;

    /// <inheritdoc/>
    public override string ToString()
    {
        var what = Access switch { MemoryAccess.Read => "read", MemoryAccess.Write => "write", MemoryAccess.ReadWrite => "read/write", _ => "access" };
        var why = Reason switch
        {
            MemoryFaultReason.Unmapped => $"0x{Address:x} is not mapped in {Space.Name}",
            MemoryFaultReason.Permission => $"the mapping of 0x{Address:x} in {Space.Name} does not allow {what}",
            MemoryFaultReason.Overflow => "the range wraps past the end of the 64-bit address space",
            MemoryFaultReason.Disposed => $"{Space.Name}: the VM's memory is gone (VM disposed or memslot removed)",
            _ => Reason.ToString(),
        };
        return $"{what} of {Length} byte(s) at 0x{RequestAddress:x}: {why}";
    }
}

/// <summary>The exception form of a <see cref="MemoryFault"/>, thrown by the convenience (non-Try) accessors.</summary>
public sealed class MemoryFaultException(MemoryFault fault) : Exception(fault.ToString())
{
    /// <summary>Where and why the translation failed.</summary>
    public MemoryFault Fault { get; } = fault;
}

/// <summary>
/// Memory as a device sees it. Every access is translate + permission + bounds: a miss or a permission failure is a
/// <see cref="MemoryFault"/> (Try methods) or a <see cref="MemoryFaultException"/> (the others), never an access outside
/// mapped memory. An access may span adjacent mappings (or memslots) when every byte of it is mapped.
/// Two kinds exist: <see cref="GuestPhysicalSpace"/> (the VM's memslots, <see cref="Vm.PhysicalSpace"/>) and
/// <see cref="IovaSpace"/> (IOVA → address in a parent space, changed at run time: the vhost IOTLB, a VFIO type1 container).
/// Translation is safe while the mappings change on another thread: it uses an immutable snapshot.
/// </summary>
public abstract unsafe class AddressSpace
{
    long _faults;

    private protected AddressSpace(Vm vm, string name)
    {
        ArgumentNullException.ThrowIfNull(vm);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Vm = vm;
        Name = name;
    }

    /// <summary>A short name used in faults and tables ("gpa", "vhost-vdpa0 IOTLB", "vfio container 1").</summary>
    public string Name { get; }

    /// <summary>The VM whose guest memory is at the bottom of this space.</summary>
    public Vm Vm { get; }

    /// <summary>
    /// Changes whenever a translation this space (or a space below it) gives may have changed. A cache of translations
    /// (e.g. a virtqueue's ring addresses) stays valid while this value is unchanged.
    /// </summary>
    public abstract long Generation { get; }

    /// <summary>Faults this space (not one below it) has reported since it was created.</summary>
    public long Faults => Volatile.Read(ref _faults);

    /// <summary>
    /// Translates the start of [<paramref name="address"/>, +<paramref name="length"/>) one level down (IOVA → parent
    /// address; gpa → gpa for the guest-physical space). <paramref name="contiguous"/> is how many bytes from
    /// <paramref name="address"/> (at most <paramref name="length"/>, at least 1) the same mapping covers.
    /// False with a fault when the first byte is unmapped or the mapping lacks <paramref name="access"/>.
    /// </summary>
    public abstract bool TryTranslate(ulong address, long length, MemoryAccess access, out ulong target, out long contiguous, out MemoryFault fault);

    /// <summary>Translates one address (throws <see cref="MemoryFaultException"/> on a fault).</summary>
    public ulong Translate(ulong address, MemoryAccess access = MemoryAccess.Read)
        => TryTranslate(address, 1, access, out var t, out _, out var f) ? t : throw new MemoryFaultException(f);

    /// <summary>
    /// The largest run of this space around <paramref name="address"/> that lies in one host range of one memslot, with
    /// the access every level allows: like <see cref="TryTranslate"/> but all the way down to host memory, checking
    /// every level (<paramref name="length"/> only frames a fault). What a device may cache as one translation.
    /// Internal: host pointers leave the SDK only as spans of a checked range.
    /// </summary>
    internal abstract bool TryResolveExtent(ulong address, long length, MemoryAccess access, out HostExtent extent, out MemoryFault fault);

    /// <summary>The host bytes of the start of a range and how many bytes from it (≤ length, ≥ 1) are contiguous there.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal bool TryResolveHost(ulong address, long length, MemoryAccess access, out nint host, out long contiguous, out MemoryFault fault)
    {
        if (!TryResolveExtent(address, length, access, out var e, out fault))
        {
            host = 0;
            contiguous = 0;
            return false;
        }
        host = e.HostOf(address);
        contiguous = e.Contiguous(address, length);
        return true;
    }

    /// <summary>Whether every byte of the range is mapped with <paramref name="access"/>, down to host memory; else the first fault.</summary>
    public bool TryCheck(ulong address, long length, MemoryAccess access, out MemoryFault fault)
    {
        if (!CheckRange(address, length, access, out fault)) return false;
        for (long done = 0; done < length;)
        {
            if (!TryResolveHost(address + (ulong)done, length - done, access, out _, out var n, out fault))
                return Reframe(ref fault, address, length);
            done += n;
        }
        return true;
    }

    /// <summary>Whether every byte of the range is mapped with <paramref name="access"/>.</summary>
    public bool IsAccessible(ulong address, long length, MemoryAccess access) => TryCheck(address, length, access, out _);

    /// <summary>Reads [address, +destination.Length) into <paramref name="destination"/>; on a fault nothing is guaranteed about destination.</summary>
    public bool TryRead(ulong address, Span<byte> destination, out MemoryFault fault)
    {
        if (!CheckRange(address, destination.Length, MemoryAccess.Read, out fault)) return false;
        for (int done = 0; done < destination.Length;)
        {
            var at = address + (ulong)done;
            if (!TryResolveExtent(at, destination.Length - done, MemoryAccess.Read, out var e, out fault))
                return Reframe(ref fault, address, destination.Length);
            var n = (int)e.Contiguous(at, destination.Length - done);
            // The copy runs under the teardown guard: the slot cannot be unmapped until it is done.
            using (SlotGuard.Enter(e.Slot.Serial))
            {
                if (e.Slot.Removed) return Fault(out fault, at, address, destination.Length, MemoryAccess.Read, MemoryFaultReason.Disposed);
                new ReadOnlySpan<byte>((void*)e.HostOf(at), n).CopyTo(destination[done..]);
            }
            done += n;
        }
        return true;
    }

    /// <summary>Writes <paramref name="source"/> at <paramref name="address"/>. Checks the whole range first, so a faulting write writes nothing.</summary>
    public bool TryWrite(ulong address, ReadOnlySpan<byte> source, out MemoryFault fault)
    {
        if (!TryCheck(address, source.Length, MemoryAccess.Write, out fault)) return false;
        for (int done = 0; done < source.Length;)
        {
            var at = address + (ulong)done;
            if (!TryResolveExtent(at, source.Length - done, MemoryAccess.Write, out var e, out fault))
                return Reframe(ref fault, address, source.Length); // the mapping changed since the check
            var n = (int)e.Contiguous(at, source.Length - done);
            using (SlotGuard.Enter(e.Slot.Serial)) // see TryRead
            {
                if (e.Slot.Removed) return Fault(out fault, at, address, source.Length, MemoryAccess.Write, MemoryFaultReason.Disposed);
                source.Slice(done, n).CopyTo(new Span<byte>((void*)e.HostOf(at), n));
            }
            done += n;
        }
        return true;
    }

    /// <summary>Reads a <typeparamref name="T"/> at <paramref name="address"/>; false and the fault when it does not translate.</summary>
    public bool TryRead<T>(ulong address, out T value, out MemoryFault fault) where T : unmanaged
    {
        if (TryResolveExtent(address, sizeof(T), MemoryAccess.Read, out var e, out fault) && e.Contiguous(address, sizeof(T)) == sizeof(T))
        {
            using (SlotGuard.Enter(e.Slot.Serial)) // see TryRead
            {
                if (!e.Slot.Removed)
                {
                    value = Unsafe.ReadUnaligned<T>((void*)e.HostOf(address));
                    return true;
                }
            }
            value = default;
            return Fault(out fault, address, address, sizeof(T), MemoryAccess.Read, MemoryFaultReason.Disposed);
        }
        value = default;
        if (fault.Space is not null) return Reframe(ref fault, address, sizeof(T));
        T v = default; // spans two mappings
        var ok = TryRead(address, new Span<byte>(&v, sizeof(T)), out fault);
        value = v;
        return ok;
    }

    /// <summary>Writes <paramref name="value"/> at <paramref name="address"/>; false and the fault when it does not translate.</summary>
    public bool TryWrite<T>(ulong address, T value, out MemoryFault fault) where T : unmanaged
    {
        if (TryResolveExtent(address, sizeof(T), MemoryAccess.Write, out var e, out fault) && e.Contiguous(address, sizeof(T)) == sizeof(T))
        {
            using (SlotGuard.Enter(e.Slot.Serial)) // see TryRead
            {
                if (!e.Slot.Removed)
                {
                    Unsafe.WriteUnaligned((void*)e.HostOf(address), value);
                    return true;
                }
            }
            return Fault(out fault, address, address, sizeof(T), MemoryAccess.Write, MemoryFaultReason.Disposed);
        }
        if (fault.Space is not null) return Reframe(ref fault, address, sizeof(T));
        return TryWrite(address, new ReadOnlySpan<byte>(&value, sizeof(T)), out fault);
    }

    /// <summary>
    /// The host bytes of [address, +length) when one mapping (or memslot) covers them all with <paramref name="access"/>.
    /// False with a fault when some byte is not accessible; false with <c>default</c> fault when the range is accessible
    /// but spans two mappings (use <see cref="TryRead"/>/<see cref="TryWrite"/> then). The span is valid until the
    /// mapping changes or the VM's memory goes away.
    /// </summary>
    public bool TryGetSpan(ulong address, int length, MemoryAccess access, out Span<byte> span, out MemoryFault fault)
    {
        span = default;
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), $"length must not be negative; got {length}");
        if (!CheckRange(address, length, access, out fault)) return false;
        if (length == 0) return true;
        if (!TryResolveHost(address, length, access, out var host, out var n, out fault)) return Reframe(ref fault, address, length);
        if (n < length)
        {
            TryCheck(address, length, access, out fault);
            return false;
        }
        span = new Span<byte>((void*)host, length);
        return true;
    }

    // ---- throwing conveniences (REPL, tests) ----

    /// <summary>Fills <paramref name="destination"/> from <paramref name="address"/>; throws <see cref="MemoryFaultException"/> on a fault.</summary>
    public void Read(ulong address, Span<byte> destination)
    {
        if (!TryRead(address, destination, out var f)) throw new MemoryFaultException(f);
    }

    /// <summary>Copies <paramref name="source"/> to <paramref name="address"/>; throws <see cref="MemoryFaultException"/> on a fault.</summary>
    public void Write(ulong address, ReadOnlySpan<byte> source)
    {
        if (!TryWrite(address, source, out var f)) throw new MemoryFaultException(f);
    }

    /// <summary>Reads a <typeparamref name="T"/> at <paramref name="address"/>; throws <see cref="MemoryFaultException"/> on a fault.</summary>
    public T Read<T>(ulong address) where T : unmanaged
        => TryRead<T>(address, out var v, out var f) ? v : throw new MemoryFaultException(f);

    /// <summary>Writes <paramref name="value"/> at <paramref name="address"/>; throws <see cref="MemoryFaultException"/> on a fault.</summary>
    public void Write<T>(ulong address, T value) where T : unmanaged
    {
        if (!TryWrite(address, value, out var f)) throw new MemoryFaultException(f);
    }

    /// <summary>Reads <paramref name="length"/> bytes at <paramref name="address"/> into a new array.</summary>
    public byte[] ReadBytes(ulong address, int length)
    {
        var b = new byte[length];
        Read(address, b);
        return b;
    }

    /// <summary>Throws the fault for an inaccessible range (or returns when it is all accessible).</summary>
    public void Check(ulong address, long length, MemoryAccess access)
    {
        if (!TryCheck(address, length, access, out var f)) throw new MemoryFaultException(f);
    }

    // ---- for implementations ----

    [ThreadStatic] static bool _peeking;

    /// <summary>Makes a fault found on a piece of an access describe the whole access (its start and length); returns false.</summary>
    internal static bool Reframe(ref MemoryFault fault, ulong address, long length)
    {
        fault = fault with { RequestAddress = address, Length = length };
        return false;
    }

    /// <summary>
    /// Reads a value for display (a REPL table): no permission needed, and a miss is not counted as a device fault.
    /// Null when the bytes are not mapped.
    /// </summary>
    internal T? Peek<T>(ulong address) where T : unmanaged
    {
        _peeking = true;
        try
        {
            if (!TryResolveExtent(address, sizeof(T), MemoryAccess.None, out var e, out _) || e.Contiguous(address, sizeof(T)) != sizeof(T)) return null;
            using (SlotGuard.Enter(e.Slot.Serial))
                return e.Slot.Removed ? null : Unsafe.ReadUnaligned<T>((void*)e.HostOf(address));
        }
        finally
        {
            _peeking = false;
        }
    }

    /// <summary>Counts and returns a fault of this space.</summary>
    private protected bool Fault(out MemoryFault fault, ulong at, ulong request, long length, MemoryAccess access, MemoryFaultReason reason)
    {
        if (!_peeking) Interlocked.Increment(ref _faults);
        fault = new MemoryFault(this, at, request, length, access, reason);
        return false;
    }

    /// <summary>Refuses (and counts) a range that wraps past 2^64; lengths must not be negative.</summary>
    internal bool CheckRange(ulong address, long length, MemoryAccess access, out MemoryFault fault)
    {
        if (length < 0) throw new ArgumentOutOfRangeException(nameof(length), $"length must not be negative; got {length}");
        if (length > 0 && address + (ulong)(length - 1) < address)
            return Fault(out fault, address, address, length, access, MemoryFaultReason.Overflow);
        fault = default;
        return true;
    }
}

/// <summary>
/// A run [<see cref="First"/>, <see cref="Last"/>] of an address space that lies in one host range of one memslot
/// (<see cref="Slot"/>), with the access every level allows (<see cref="Perm"/>): one cacheable translation.
/// Touch its bytes only under <see cref="SlotGuard"/> on <see cref="Slot"/> with <see cref="MemSlot.Removed"/> checked.
/// </summary>
internal readonly struct HostExtent(ulong first, ulong last, nint host, MemSlot slot, MemoryAccess perm)
{
    public readonly ulong First = first, Last = last;
    /// <summary>Host address of <see cref="First"/>.</summary>
    public readonly nint Host = host;
    public readonly MemSlot Slot = slot;
    public readonly MemoryAccess Perm = perm;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public nint HostOf(ulong address) => Host + (nint)(address - First);

    /// <summary>Bytes from <paramref name="address"/> (inside the run) to its end, capped at <paramref name="length"/>; at least 1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public long Contiguous(ulong address, long length)
    {
        var left = Last - address; // bytes after address
        return length <= 1 ? 1 : (ulong)(length - 1) <= left ? length : (long)left + 1;
    }

    /// <summary>Whether [address, +length) (length ≥ 1) lies inside the run with <paramref name="access"/> allowed.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool Covers(ulong address, ulong length, MemoryAccess access)
        => Slot is not null && address - First <= Last - First && length - 1 <= Last - address && (access & ~Perm) == 0;
}
