using System.Runtime.InteropServices;
using VirtLab.Sdk.Machine;

namespace VirtLab.Plugins.Vfio.Type1;

/// <summary>
/// The user address space of the process that owns a container, as far as the model's copy_to_user /
/// copy_from_user can reach: the VM's guest RAM (its memslots' host mappings, where QEMU's MAP_DMA vaddrs point) and
/// buffers allocated here (bitmaps, ioctl structs). Addresses are real host virtual addresses of this process. A
/// pointer outside every region faults (-EFAULT), exactly where an unmapped page would; nothing outside a region is
/// ever read or written.
/// </summary>
public sealed unsafe class UserMemory
{
    readonly object gate = new();
    readonly List<UserBuffer> buffers = [];
    readonly List<(nint Address, long Length)> registered = [];
    readonly Vm? vm;

    public UserMemory(Vm? vm = null) => this.vm = vm;

    /// <summary>A zeroed buffer of <paramref name="bytes"/> bytes in this user memory (freed on Dispose).</summary>
    public UserBuffer Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        var b = new UserBuffer(this, bytes);
        lock (gate) buffers.Add(b);
        return b;
    }

    /// <summary>
    /// Declares [<paramref name="address"/>, +<paramref name="length"/>) of this process (memory the caller owns and keeps
    /// alive) as user memory; disposing the result withdraws it.
    /// </summary>
    public IDisposable Register(nint address, long length)
    {
        if (address == 0 || length <= 0) throw new ArgumentException($"a user region needs an address and a positive length; got 0x{address:x}, {length}");
        var r = (address, length);
        lock (gate) registered.Add(r);
        return new Registration(this, r);
    }

    sealed class Registration(UserMemory owner, (nint, long) r) : IDisposable
    {
        public void Dispose()
        {
            lock (owner.gate) owner.registered.Remove(r);
        }
    }

    internal void Remove(UserBuffer b)
    {
        lock (gate) buffers.Remove(b);
    }

    /// <summary>
    /// Resolves user address <paramref name="addr"/>: the host pointer and how many bytes from it lie in the same
    /// region (0 when unmapped).
    /// </summary>
    internal ulong Resolve(ulong addr, out byte* p)
    {
        lock (gate)
        {
            foreach (var b in buffers)
            {
                var start = (ulong)b.Address;
                if (addr >= start && addr - start < (ulong)b.Length)
                {
                    p = (byte*)addr;
                    return (ulong)b.Length - (addr - start);
                }
            }
            foreach (var (a, l) in registered)
            {
                var start = (ulong)a;
                if (addr >= start && addr - start < (ulong)l)
                {
                    p = (byte*)addr;
                    return (ulong)l - (addr - start);
                }
            }
        }
        if (vm is { IsDisposed: false })
        {
            foreach (var s in vm.Slots)
            {
                var start = (ulong)s.HostAddress;
                if (addr >= start && addr - start < (ulong)s.Size.Bytes)
                {
                    p = (byte*)addr;
                    return (ulong)s.Size.Bytes - (addr - start);
                }
            }
        }
        p = null;
        return 0;
    }

    /// <summary>copy_from_user: false (-EFAULT) unless all of [addr, addr+dst.Length) is user memory of one region.</summary>
    internal bool CopyFrom(ulong addr, Span<byte> dst)
    {
        if (Resolve(addr, out var p) < (ulong)dst.Length) return false;
        new ReadOnlySpan<byte>(p, dst.Length).CopyTo(dst);
        return true;
    }

    /// <summary>copy_to_user: false (-EFAULT) unless all of [addr, addr+src.Length) is user memory of one region.</summary>
    internal bool CopyTo(ulong addr, ReadOnlySpan<byte> src)
    {
        if (Resolve(addr, out var p) < (ulong)src.Length) return false;
        src.CopyTo(new Span<byte>(p, src.Length));
        return true;
    }

    /// <summary>The guest-physical address of user address <paramref name="vaddr"/> when it lies in guest RAM, else null.</summary>
    public ulong? GuestPhysical(ulong vaddr)
    {
        if (vm is not { IsDisposed: false }) return null;
        foreach (var s in vm.Slots)
        {
            var start = (ulong)s.HostAddress;
            if (vaddr >= start && vaddr - start < (ulong)s.Size.Bytes) return s.Gpa + (vaddr - start);
        }
        return null;
    }

    /// <summary>Bytes of guest RAM from <paramref name="vaddr"/> to the end of its memslot (0 when not guest RAM).</summary>
    internal ulong GuestRamExtent(ulong vaddr)
    {
        if (vm is not { IsDisposed: false }) return 0;
        foreach (var s in vm.Slots)
        {
            var start = (ulong)s.HostAddress;
            if (vaddr >= start && vaddr - start < (ulong)s.Size.Bytes) return (ulong)s.Size.Bytes - (vaddr - start);
        }
        return 0;
    }

    /// <summary>The user address (host virtual address) of guest-physical <paramref name="gpa"/>: what QEMU passes as MAP_DMA's vaddr.</summary>
    public ulong VaddrOf(ulong gpa)
    {
        if (vm is null) throw new InvalidOperationException("this user memory has no VM: there is no guest RAM to take a vaddr of");
        return (ulong)vm.Memory.HostAddress(gpa);
    }
}

/// <summary>A zeroed buffer in a container's user memory: its <see cref="Address"/> is what goes into a struct's pointer field.</summary>
public sealed unsafe class UserBuffer : IDisposable
{
    readonly UserMemory owner;
    byte* p;

    internal UserBuffer(UserMemory owner, long length)
    {
        this.owner = owner;
        Length = length;
        p = (byte*)NativeMemory.AllocZeroed((nuint)Math.Max(1, length));
    }

    public long Length { get; }

    /// <summary>The user address of the first byte.</summary>
    public ulong Address => (ulong)Ptr;

    byte* Ptr => p != null ? p : throw new ObjectDisposedException(nameof(UserBuffer));

    public Span<byte> Bytes => new(Ptr, checked((int)Length));

    /// <summary>The buffer as u64 words (the layout of a vfio dirty bitmap).</summary>
    public Span<ulong> Words => new(Ptr, checked((int)(Length / 8)));

    public ulong Word(long i) => ((ulong*)Ptr)[i];

    public void Clear() => NativeMemory.Clear(Ptr, (nuint)Length);

    public void Dispose()
    {
        if (p == null) return;
        owner.Remove(this);
        NativeMemory.Free(p);
        p = null;
    }
}
