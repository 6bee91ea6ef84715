// Libc becomes internal (issue #6): its public members stay undocumented until then.
#pragma warning disable CS1591
using System.Runtime.InteropServices;

namespace VirtLab.Sdk.Native;

/// <summary>
/// The libc calls VirtLab makes (mmap, madvise, memfd, fallocate, mincore, ioctl, eventfd, …), Linux x86-64.
/// Raw entry points return what libc returns (-1 + errno on failure); the <c>Checked</c> helpers turn
/// failures into <see cref="LibcException"/> carrying the errno, the call and what was being done.
/// </summary>
internal static unsafe partial class Libc
{
    const string LibName = "libc";

    // mmap prot / flags (asm-generic/mman-common.h, asm/mman.h for x86)
    public const int PROT_NONE = 0x0, PROT_READ = 0x1, PROT_WRITE = 0x2, PROT_EXEC = 0x4;
    public const int MAP_SHARED = 0x01, MAP_PRIVATE = 0x02, MAP_FIXED = 0x10, MAP_ANONYMOUS = 0x20,
        MAP_NORESERVE = 0x4000, MAP_POPULATE = 0x8000, MAP_HUGETLB = 0x40000;
    /// <summary>Huge page size is encoded as log2(size) &lt;&lt; MAP_HUGE_SHIFT (same shift for memfd's MFD_HUGE_*).</summary>
    public const int MAP_HUGE_SHIFT = 26;
    public const int MAP_HUGE_2MB = 21 << MAP_HUGE_SHIFT, MAP_HUGE_1GB = 30 << MAP_HUGE_SHIFT;
    public static readonly nint MAP_FAILED = -1;

    // madvise advice
    public const int MADV_NORMAL = 0, MADV_RANDOM = 1, MADV_SEQUENTIAL = 2, MADV_WILLNEED = 3, MADV_DONTNEED = 4,
        MADV_FREE = 8, MADV_REMOVE = 9, MADV_DONTFORK = 10, MADV_HUGEPAGE = 14, MADV_NOHUGEPAGE = 15,
        MADV_POPULATE_READ = 22, MADV_POPULATE_WRITE = 23;

    // memfd_create flags
    public const uint MFD_CLOEXEC = 0x1, MFD_ALLOW_SEALING = 0x2, MFD_HUGETLB = 0x4;
    public const uint MFD_HUGE_2MB = 21u << MAP_HUGE_SHIFT, MFD_HUGE_1GB = 30u << MAP_HUGE_SHIFT;

    // fallocate modes
    public const int FALLOC_FL_KEEP_SIZE = 0x1, FALLOC_FL_PUNCH_HOLE = 0x2;

    // open flags, eventfd flags
    public const int O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_CLOEXEC = 0x80000, O_NONBLOCK = 0x800;
    public const int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800, EFD_SEMAPHORE = 1;

    // sysconf names
    public const int _SC_PAGESIZE = 30, _SC_NPROCESSORS_ONLN = 84;

    public const int CLOCK_THREAD_CPUTIME_ID = 3;

    [StructLayout(LayoutKind.Sequential)]
    public struct Timespec { public long tv_sec, tv_nsec; }

    [LibraryImport(LibName, EntryPoint = "clock_gettime", SetLastError = true)]
    public static partial int clock_gettime(int clock, Timespec* tp);

    [LibraryImport(LibName, EntryPoint = "mmap", SetLastError = true)]
    public static partial nint mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(LibName, EntryPoint = "munmap", SetLastError = true)]
    public static partial int munmap(nint addr, nuint length);

    [LibraryImport(LibName, EntryPoint = "madvise", SetLastError = true)]
    public static partial int madvise(nint addr, nuint length, int advice);

    [LibraryImport(LibName, EntryPoint = "mincore", SetLastError = true)]
    public static partial int mincore(nint addr, nuint length, byte* vec);

    [LibraryImport(LibName, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int memfd_create(string name, uint flags);

    [LibraryImport(LibName, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int ftruncate(int fd, long length);

    [LibraryImport(LibName, EntryPoint = "fallocate", SetLastError = true)]
    public static partial int fallocate(int fd, int mode, long offset, long length);

    [LibraryImport(LibName, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags, int mode);

    [LibraryImport(LibName, EntryPoint = "close", SetLastError = true)]
    public static partial int close(int fd);

    [LibraryImport(LibName, EntryPoint = "read", SetLastError = true)]
    public static partial nint read(int fd, void* buf, nuint count);

    [LibraryImport(LibName, EntryPoint = "write", SetLastError = true)]
    public static partial nint write(int fd, void* buf, nuint count);

    [LibraryImport(LibName, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int eventfd(uint initval, int flags);

    /// <summary>struct pollfd.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct PollFd
    {
        public int fd;
        public short events;
        public short revents;
    }

    internal const short POLLIN = 0x1, POLLERR = 0x8, POLLHUP = 0x10, POLLNVAL = 0x20;

    [LibraryImport(LibName, EntryPoint = "fcntl", SetLastError = true)]
    internal static partial int fcntl(int fd, int cmd, int arg);

    internal const int F_DUPFD_CLOEXEC = 1030;

    [LibraryImport(LibName, EntryPoint = "poll", SetLastError = true)]
    internal static partial int poll(PollFd* fds, nuint nfds, int timeout);

    // sched_setaffinity / sched_getaffinity: pid 0 is the calling thread (a tid names one thread, not the process).
    // The mask is an array of unsigned longs, bit n = CPU n (cpu_set_t); glibc's getaffinity returns 0, not the size.
    [LibraryImport(LibName, EntryPoint = "sched_setaffinity", SetLastError = true)]
    public static partial int sched_setaffinity(int pid, nuint cpusetsize, ulong* mask);

    [LibraryImport(LibName, EntryPoint = "sched_getaffinity", SetLastError = true)]
    public static partial int sched_getaffinity(int pid, nuint cpusetsize, ulong* mask);

    [LibraryImport(LibName, EntryPoint = "sched_getcpu", SetLastError = true)]
    public static partial int sched_getcpu();

    [LibraryImport(LibName, EntryPoint = "sysconf", SetLastError = true)]
    public static partial long sysconf(int name);

    // ioctl is variadic in C; on x86-64 SysV a fixed third argument in a register is passed identically.
    [LibraryImport(LibName, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, nint arg);

    [LibraryImport(LibName, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, void* arg);

    [LibraryImport(LibName, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int ioctl(int fd, nuint request, ulong arg);

    /// <summary>errno of the last failed P/Invoke on this thread.</summary>
    public static int Errno => Marshal.GetLastPInvokeError();

    // ---- checked helpers -------------------------------------------------------------------------

    /// <summary>Throws <see cref="LibcException"/> when <paramref name="result"/> is negative.</summary>
    public static int Check(int result, string call, string? doing = null)
    {
        if (result < 0) throw LibcException.FromErrno(Errno, call, doing);
        return result;
    }

    public static long Check(long result, string call, string? doing = null)
    {
        if (result < 0) throw LibcException.FromErrno(Errno, call, doing);
        return result;
    }

    public static nint MmapChecked(nint addr, long length, int prot, int flags, int fd, long offset, string? doing = null)
    {
        var p = mmap(addr, (nuint)length, prot, flags, fd, offset);
        if (p == MAP_FAILED) throw LibcException.FromErrno(Errno, "mmap", doing);
        return p;
    }

    public static void MunmapChecked(nint addr, long length, string? doing = null)
        => Check(munmap(addr, (nuint)length), "munmap", doing);

    public static void MadviseChecked(nint addr, long length, int advice, string? doing = null)
        => Check(madvise(addr, (nuint)length, advice), "madvise(" + AdviceName(advice) + ")", doing);

    public static int CloseChecked(int fd, string? doing = null) => Check(close(fd), "close", doing);

    public static int PageSize { get; } = (int)sysconf(_SC_PAGESIZE);

    static string AdviceName(int advice) => advice switch
    {
        MADV_DONTNEED => "MADV_DONTNEED",
        MADV_HUGEPAGE => "MADV_HUGEPAGE",
        MADV_NOHUGEPAGE => "MADV_NOHUGEPAGE",
        MADV_POPULATE_READ => "MADV_POPULATE_READ",
        MADV_POPULATE_WRITE => "MADV_POPULATE_WRITE",
        MADV_REMOVE => "MADV_REMOVE",
        MADV_WILLNEED => "MADV_WILLNEED",
        MADV_FREE => "MADV_FREE",
        _ => advice.ToString(),
    };
}

/// <summary>Linux errno values (asm-generic/errno-base.h, errno.h) VirtLab reasons about.</summary>
public static class Errno
{
    public const int EPERM = 1, ENOENT = 2, ESRCH = 3, EINTR = 4, EIO = 5, ENXIO = 6, E2BIG = 7, EBADF = 9,
        EAGAIN = 11, ENOMEM = 12, EACCES = 13, EFAULT = 14, EBUSY = 16, EEXIST = 17, ENODEV = 19, EINVAL = 22,
        ENFILE = 23, EMFILE = 24, ENOTTY = 25, EFBIG = 27, ENOSPC = 28, ERANGE = 34, ENOSYS = 38,
        EOPNOTSUPP = 95, ETIMEDOUT = 110;
    /// <summary>ENOBUFS (vhost: vring index out of range); ENOTSUPP is kernel-internal (524) but reaches userspace from some drivers.</summary>
    public const int ENOBUFS = 105, ENOTSUPP = 524;

    public static string Name(int errno) => errno switch
    {
        EPERM => "EPERM", ENOENT => "ENOENT", ESRCH => "ESRCH", EINTR => "EINTR", EIO => "EIO", ENXIO => "ENXIO",
        E2BIG => "E2BIG", EBADF => "EBADF", EAGAIN => "EAGAIN", ENOMEM => "ENOMEM", EACCES => "EACCES",
        EFAULT => "EFAULT", EBUSY => "EBUSY", EEXIST => "EEXIST", ENODEV => "ENODEV", EINVAL => "EINVAL",
        ENFILE => "ENFILE", EMFILE => "EMFILE", ENOTTY => "ENOTTY", EFBIG => "EFBIG", ENOSPC => "ENOSPC",
        ERANGE => "ERANGE", ENOSYS => "ENOSYS", EOPNOTSUPP => "EOPNOTSUPP", ETIMEDOUT => "ETIMEDOUT",
        ENOBUFS => "ENOBUFS", ENOTSUPP => "ENOTSUPP",
        _ => "errno " + errno,
    };
}

/// <summary>A libc or kernel call failed. Carries the errno, the call, and what VirtLab was doing.</summary>
public class LibcException : IOException
{
    public int Errno { get; }
    public string Call { get; }
    public string? Doing { get; }

    public LibcException(int errno, string call, string? doing, string message) : base(message)
    {
        Errno = errno;
        Call = call;
        Doing = doing;
        HResult = errno;
    }

    public string ErrnoName => Native.Errno.Name(Errno);

    public static LibcException FromErrno(int errno, string call, string? doing = null)
    {
        var text = Marshal.GetPInvokeErrorMessage(errno);
        var msg = doing is null
            ? $"{call} failed: {Native.Errno.Name(errno)} ({text})"
            : $"{doing}: {call} failed: {Native.Errno.Name(errno)} ({text})";
        return new LibcException(errno, call, doing, msg);
    }
}
