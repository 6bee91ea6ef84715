using VirtLab.Sdk.Native;

namespace VirtLab.Plugins.Vfio.Type1;

/// <summary>IOMMU_READ / IOMMU_WRITE: what the device may do (the DMA direction, from the device's side).</summary>
[Flags]
public enum DmaProt
{
    None = 0,
    Read = 1,
    Write = 2,
    ReadWrite = Read | Write,
}

/// <summary>A kernel call's outcome: a non-negative result or a negative errno, with the reason in words.</summary>
public readonly record struct KResult(long Ret, string? Why = null)
{
    public static readonly KResult Ok = new(0);
    public static KResult Err(int errno, string why) => new(-errno, why);
    public bool Failed => Ret < 0;
    public int Errno => Ret < 0 ? (int)-Ret : 0;

    public override string ToString() => Failed ? $"-{Sdk.Native.Errno.Name(Errno)}: {Why}" : Ret.ToString();
}

/// <summary>A VFIO call failed the way the kernel would fail it: <see cref="Errno"/> is the errno the ioctl returns.</summary>
public sealed class VfioException : IOException
{
    public VfioException(string call, int errno, string why)
        : base($"{call} failed: {Sdk.Native.Errno.Name(errno)}: {why}")
    {
        Call = call;
        Errno = errno;
        HResult = errno;
    }

    public string Call { get; }
    public int Errno { get; }
    public string ErrnoName => Sdk.Native.Errno.Name(Errno);

    internal static long Check(string call, KResult r) => r.Failed ? throw new VfioException(call, r.Errno, r.Why ?? "") : r.Ret;
}

/// <summary>
/// What an IOMMU domain looks like to type1: the aperture (the IOVA range the hardware translates), the page sizes it
/// maps, and the reserved regions (MSI doorbell) no mapping may cover. Defaults: Intel VT-d with a 39-bit
/// address width (3-level second-stage tables), 4 KiB / 2 MiB / 1 GiB pages, the x86 MSI window.
/// </summary>
public sealed record IommuGeometry(ulong ApertureStart, ulong ApertureEnd, ulong PgSizeBitmap, IReadOnlyList<(ulong Start, ulong Length)> Reserved)
{
    public static IommuGeometry VtD(int addressWidth = 39) => new(0, addressWidth >= 64 ? ulong.MaxValue : (1UL << addressWidth) - 1,
        (1UL << 12) | (1UL << 21) | (1UL << 30), [(0xfee0_0000UL, 0x10_0000UL)]);
}

/// <summary>Where a dirty bitmap goes: a pointer and how many bytes from it are writable user memory.</summary>
internal readonly unsafe struct BitmapTarget(byte* p, ulong accessible)
{
    public byte* P { get; } = p;
    public ulong Accessible { get; } = accessible;

    public bool Covers(ulong offset, ulong length) => P != null && offset <= Accessible && length <= Accessible - offset;
}

internal static class ErrnoExt
{
    public const int EPERM = Errno.EPERM, ENOENT = Errno.ENOENT, EFAULT = Errno.EFAULT, EINVAL = Errno.EINVAL,
        EEXIST = Errno.EEXIST, ENOSPC = Errno.ENOSPC, EACCES = Errno.EACCES, EBUSY = Errno.EBUSY, ENODEV = Errno.ENODEV,
        ENOTTY = Errno.ENOTTY, E2BIG = Errno.E2BIG, ENOMEM = Errno.ENOMEM;
}
