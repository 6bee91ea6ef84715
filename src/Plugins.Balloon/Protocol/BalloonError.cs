using VirtLab.Sdk.Native;

namespace VirtLab.Plugins.Balloon.Protocol;

/// <summary>Why the device refused a request. Each kind is counted on its own; the device keeps serving.</summary>
public enum BalloonErrorKind
{
    /// <summary>A length or field the format does not allow (EINVAL).</summary>
    Malformed,
    /// <summary>More entries or bytes than a request may carry, or a header claiming more than its descriptors hold (E2BIG).</summary>
    TooLarge,
    /// <summary>A shift or length whose end overflows the 52-bit PFN space (ERANGE).</summary>
    Overflow,
    /// <summary>A bitmap whose words run past the end of the buffer (EINVAL).</summary>
    PastBuffer,
    /// <summary>A page outside guest RAM: in no memslot, or in system slot 0 (EFAULT).</summary>
    OutsideRam,
    /// <summary>Two entries of one request overlap, or an entry names a page twice (EEXIST).</summary>
    Overlap,
    /// <summary>Inflating a page already in the balloon (EEXIST).</summary>
    AlreadyInBalloon,
    /// <summary>Deflating a page that is not in the balloon (ENOENT).</summary>
    NotInBalloon,
    /// <summary>A reported free range not aligned to the backing's page size (EINVAL).</summary>
    Misaligned,
    /// <summary>A descriptor chain that breaks the virtqueue rules (the ring reports it; EINVAL).</summary>
    BadChain,
    /// <summary>A buffer of the wrong direction: device-writable where the format needs readable, or the reverse (EINVAL).</summary>
    WrongDirection,
}

/// <summary>A refused request: the kind, the errno a kernel interface would return, and a message naming the value.</summary>
public readonly record struct BalloonError(BalloonErrorKind Kind, string Message)
{
    public int Errno => Kind switch
    {
        BalloonErrorKind.TooLarge => Sdk.Native.Errno.E2BIG,
        BalloonErrorKind.Overflow => Sdk.Native.Errno.ERANGE,
        BalloonErrorKind.OutsideRam => Sdk.Native.Errno.EFAULT,
        BalloonErrorKind.Overlap or BalloonErrorKind.AlreadyInBalloon => Sdk.Native.Errno.EEXIST,
        BalloonErrorKind.NotInBalloon => Sdk.Native.Errno.ENOENT,
        _ => Sdk.Native.Errno.EINVAL,
    };

    public override string ToString() => $"{Sdk.Native.Errno.Name(Errno)}: {Message}";
}
