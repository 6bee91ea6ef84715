using VirtLab.Sdk.Measure;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// The host memory behind one memslot, mapped the way the KVM selftests map each backing
/// (<c>vm_userspace_mem_region_add</c>): private anonymous, THP-aligned + MADV_HUGEPAGE, MAP_HUGETLB, or a memfd mapped shared.
/// </summary>
internal sealed unsafe class HostMapping : IDisposable
{
    public nint Address { get; }
    public long Length { get; }
    public Backing Backing { get; }
    public long PageSize { get; }
    /// <summary>memfd for shared backings, else -1.</summary>
    public int Fd { get; private set; }
    int _disposed;

    HostMapping(nint address, long length, Backing backing, int fd)
    {
        Address = address;
        Length = length;
        Backing = backing;
        PageSize = backing.PageSize();
        Fd = fd;
    }

    public static HostMapping Create(long length, Backing backing, string name)
    {
        var pageSize = backing.PageSize();
        if (backing.IsHugetlb()) CheckHugePages(length, backing, pageSize);
        const int prot = Libc.PROT_READ | Libc.PROT_WRITE;
        var doing = $"mapping {new Size(length)} of {backing.Name()} memory for {name}";
        switch (backing)
        {
            case Backing.Anonymous:
            {
                // 4 KiB pages whatever the host's THP setting ("always" would fault 2 MiB at a time), as the selftests do.
                var p = Libc.MmapChecked(0, length, prot, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS, -1, 0, doing);
                try { Libc.MadviseChecked(p, length, Libc.MADV_NOHUGEPAGE, doing); }
                catch
                {
                    Libc.munmap(p, (nuint)length);
                    throw;
                }
                return new HostMapping(p, length, backing, -1);
            }

            case Backing.AnonymousThp:
            {
                // Over-allocate by one huge page, keep the aligned middle so every 2 MiB of gpa can be one PMD on the host.
                var raw = Libc.MmapChecked(0, length + pageSize, prot, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS, -1, 0, doing);
                var aligned = (nint)(((long)raw + pageSize - 1) / pageSize * pageSize);
                long head = aligned - raw, tail = pageSize - head;
                if (head > 0 && Libc.munmap(raw, (nuint)head) != 0)
                {
                    var e = Libc.Errno;
                    Libc.munmap(raw, (nuint)(length + pageSize));
                    throw LibcException.FromErrno(e, "munmap", doing);
                }
                try
                {
                    if (tail > 0) Libc.MunmapChecked(aligned + (nint)length, tail, doing);
                    Libc.MadviseChecked(aligned, length, Libc.MADV_HUGEPAGE, doing);
                }
                catch
                {
                    Libc.munmap(aligned, (nuint)(length + tail)); // the tail too, if its munmap failed
                    throw;
                }
                return new HostMapping(aligned, length, backing, -1);
            }

            case Backing.AnonymousHugetlb2M or Backing.AnonymousHugetlb1G:
            {
                var flags = Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_HUGETLB |
                            (backing == Backing.AnonymousHugetlb1G ? Libc.MAP_HUGE_1GB : Libc.MAP_HUGE_2MB);
                var p = Libc.mmap(0, (nuint)length, prot, flags, -1, 0);
                if (p == Libc.MAP_FAILED) throw HugetlbFailure(Libc.Errno, "mmap", length, backing, pageSize, doing);
                return new HostMapping(p, length, backing, -1);
            }

            case Backing.Shmem or Backing.SharedHugetlb:
            {
                var mfd = Libc.MFD_CLOEXEC | (backing == Backing.SharedHugetlb ? Libc.MFD_HUGETLB | Libc.MFD_HUGE_2MB : 0);
                var fd = Libc.Check(Libc.memfd_create("virtlab-" + name.Replace(' ', '-'), mfd), "memfd_create", doing);
                try
                {
                    Libc.Check(Libc.ftruncate(fd, length), "ftruncate", doing);
                    var p = Libc.mmap(0, (nuint)length, prot, Libc.MAP_SHARED, fd, 0);
                    if (p == Libc.MAP_FAILED)
                    {
                        var e = Libc.Errno;
                        throw backing.IsHugetlb() ? HugetlbFailure(e, "mmap", length, backing, pageSize, doing) : LibcException.FromErrno(e, "mmap", doing);
                    }
                    return new HostMapping(p, length, backing, fd);
                }
                catch
                {
                    Libc.close(fd);
                    throw;
                }
            }

            default:
                throw new ArgumentOutOfRangeException(nameof(backing), backing, null);
        }
    }

    /// <summary>Before any mmap: enough free huge pages of the backing's size? If not, say how many and how to reserve them.</summary>
    static void CheckHugePages(long length, Backing backing, long pageSize)
    {
        var dir = HostInfo.HugetlbDir(pageSize);
        if (!Directory.Exists(dir))
            throw new InsufficientHugePagesException(
                $"{backing.Name()} needs {new Size(pageSize)} huge pages but this host has no {new Size(pageSize)} hugetlb pool ({dir} is missing)", 0, 0);
        var pool = HostInfo.HugePages(pageSize);
        var overcommit = Math.Max(0, HostInfo.ReadLong(dir + "/nr_overcommit_hugepages") - pool.Surplus);
        var needed = length / pageSize;
        if (pool.Available + overcommit >= needed) return;
        throw new InsufficientHugePagesException(HugeMessage(length, backing, pageSize, pool, needed), needed, pool.Available);
    }

    static Exception HugetlbFailure(int errno, string call, long length, Backing backing, long pageSize, string doing)
    {
        if (errno != Errno.ENOMEM) return LibcException.FromErrno(errno, call, doing);
        var pool = HostInfo.HugePages(pageSize);
        var needed = length / pageSize;
        return new InsufficientHugePagesException(HugeMessage(length, backing, pageSize, pool, needed) + $" ({call} failed with ENOMEM)", needed, pool.Available);
    }

    static string HugeMessage(long length, Backing backing, long pageSize, HostInfo.HugePool pool, long needed)
    {
        var target = pool.Total + Math.Max(1, needed - pool.Available);
        return $"{backing.Name()} needs {needed} huge page{(needed == 1 ? "" : "s")} of {new Size(pageSize)} for {new Size(length)} but only {pool.Available} {(pool.Available == 1 ? "is" : "are")} available " +
               $"(nr_hugepages={pool.Total}, free {pool.Free}, reserved {pool.Reserved}); reserve them as root: " +
               $"echo {target} > {HostInfo.HugetlbDir(pageSize)}/nr_hugepages";
    }

    /// <summary>Drops the pages of [offset, offset+length): MADV_DONTNEED for private memory, a hole punch for a memfd.</summary>
    public void Discard(long offset, long length)
    {
        var doing = $"discarding {new Size(length)} of {Backing.Name()} memory";
        if (Fd >= 0)
            Libc.Check(Libc.fallocate(Fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, offset, length), "fallocate(PUNCH_HOLE)", doing);
        else
            Libc.MadviseChecked(Address + (nint)offset, length, Libc.MADV_DONTNEED, doing);
    }

    /// <summary>Faults [offset, offset+length) in (MADV_POPULATE_WRITE/READ; touching each page on kernels older than 5.14).</summary>
    public void Populate(long offset, long length, bool write)
    {
        var advice = write ? Libc.MADV_POPULATE_WRITE : Libc.MADV_POPULATE_READ;
        if (Libc.madvise(Address + (nint)offset, (nuint)length, advice) == 0) return;
        var errno = Libc.Errno;
        if (errno != Errno.EINVAL)
            throw LibcException.FromErrno(errno, write ? "madvise(MADV_POPULATE_WRITE)" : "madvise(MADV_POPULATE_READ)",
                $"populating {new Size(length)} of {Backing.Name()} memory");
        var p = (byte*)(Address + (nint)offset);
        for (long i = 0; i < length; i += 4096)
        {
            var v = Volatile.Read(ref p[i]);
            if (write) Interlocked.CompareExchange(ref p[i], v, v); // a write fault that keeps the byte
        }
    }

    /// <summary>Resident bytes in [offset, offset+length), from mincore (in 4 KiB units, also for huge pages).</summary>
    public long Resident(long offset, long length)
    {
        const long chunk = 1L << 30; // 256 KiB of vector per call
        var vec = new byte[(int)(Math.Min(length, chunk) / 4096 + 1)];
        long resident = 0;
        for (long off = offset; off < offset + length; off += chunk)
        {
            var len = Math.Min(chunk, offset + length - off);
            var pages = (int)((len + 4095) / 4096);
            fixed (byte* v = vec)
                Libc.Check(Libc.mincore(Address + (nint)off, (nuint)len, v), "mincore", "measuring resident guest memory");
            resident += pages - vec.AsSpan(0, pages).Count((byte)0);
        }
        return resident * 4096;
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Libc.munmap(Address, (nuint)Length);
        if (Fd >= 0) { Libc.close(Fd); Fd = -1; }
    }
}

/// <summary>Too few huge pages are reserved for a hugetlb backing. The message says how many are needed and the command to reserve them.</summary>
public sealed class InsufficientHugePagesException(string message, long needed, long available) : InvalidOperationException(message)
{
    /// <summary>Huge pages the mapping needs.</summary>
    public long Needed { get; } = needed;
    /// <summary>Free huge pages in the pool.</summary>
    public long Available { get; } = available;
}
