using System.Runtime.InteropServices;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>An owned file descriptor (/dev/kvm, VM, vCPU, stats); closed exactly once, even if finalized.</summary>
internal sealed class KvmFd : SafeHandle
{
    public readonly string What;

    public KvmFd(int fd, string what) : base(-1, ownsHandle: true)
    {
        SetHandle(fd);
        What = what;
    }

    public int Fd
    {
        get
        {
            if (IsClosed) throw new ObjectDisposedException(null, $"this KVM fd ({What}) is closed: its VM was disposed");
            return (int)handle;
        }
    }

    public override bool IsInvalid => handle < 0;

    protected override bool ReleaseHandle() => Libc.close((int)handle) == 0;

    public static KvmFd OpenDevKvm()
    {
        int fd = Libc.open("/dev/kvm", Libc.O_RDWR | Libc.O_CLOEXEC, 0);
        if (fd < 0) throw KvmException.Last("open(/dev/kvm)");
        return new KvmFd(fd, "/dev/kvm");
    }

    /// <summary>ioctl with an integer argument; returns the (non-negative) result or throws with the errno.</summary>
    public int Ioctl(nuint request, ulong arg = 0, string? detail = null)
    {
        int r = Libc.ioctl(Fd, request, arg);
        if (r < 0) throw KvmException.Last(KvmIoctl.Name(request), detail);
        return r;
    }

    public unsafe int Ioctl(nuint request, void* arg, string? detail = null)
    {
        int r = Libc.ioctl(Fd, request, arg);
        if (r < 0) throw KvmException.Last(KvmIoctl.Name(request), detail);
        return r;
    }

    /// <summary>An ioctl that returns a new fd, wrapped so it is owned.</summary>
    public KvmFd IoctlFd(nuint request, ulong arg, string what)
    {
        int r = Ioctl(request, arg);
        return new KvmFd(r, what);
    }
}

/// <summary>An owned mmap region (kvm_run, dirty ring), unmapped exactly once.</summary>
internal sealed class KvmMapping : IDisposable
{
    public nint Address { get; private set; }
    public nuint Length { get; }

    public KvmMapping(KvmFd fd, nuint length, int prot, long offset, string what)
    {
        nint p = Libc.mmap(0, length, prot, Libc.MAP_SHARED, fd.Fd, offset);
        if (p == Libc.MAP_FAILED) throw KvmException.Last($"mmap({what})");
        Address = p;
        Length = length;
    }

    public unsafe byte* Pointer
    {
        get
        {
            ObjectDisposedException.ThrowIf(Address == 0, this);
            return (byte*)Address;
        }
    }

    public void Dispose()
    {
        var a = Address;
        if (a == 0) return;
        Address = 0;
        Libc.munmap(a, Length);
        GC.SuppressFinalize(this);
    }

    ~KvmMapping() => Dispose();
}
