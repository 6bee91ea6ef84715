using System.Buffers.Binary;

namespace VirtLab.Plugins.Balloon.Protocol;

/// <summary>One <c>struct virtio_balloon_stat { le16 tag; le64 val; }</c> (packed, 10 bytes).</summary>
public readonly record struct BalloonStat(ushort Tag, ulong Value)
{
    public override string ToString() => $"{VirtioBalloon.StatName(Tag)} = {Value}";
}

/// <summary>The stats virtqueue's buffer: an array of packed 10-byte tag/value pairs.</summary>
public static class StatsFormat
{
    /// <summary>The most entries a device reads from one buffer (Linux sends one per tag it knows: 10 today, 16 at most).</summary>
    public const int MaxEntries = 64;

    public static int Encode(ReadOnlySpan<BalloonStat> stats, Span<byte> destination)
    {
        if (destination.Length < stats.Length * VirtioBalloon.StatSize)
            throw new ArgumentException($"{stats.Length} stats need {stats.Length * VirtioBalloon.StatSize} bytes; the buffer has {destination.Length}", nameof(destination));
        for (int i = 0; i < stats.Length; i++)
        {
            var d = destination[(i * VirtioBalloon.StatSize)..];
            BinaryPrimitives.WriteUInt16LittleEndian(d, stats[i].Tag);
            BinaryPrimitives.WriteUInt64LittleEndian(d[2..], stats[i].Value);
        }
        return stats.Length * VirtioBalloon.StatSize;
    }

    /// <summary>
    /// Parses a stats buffer. Tags 0–9 land in <paramref name="values"/> (the last value of a repeated tag wins, as in QEMU);
    /// unknown tags are skipped and counted in <paramref name="unknownTags"/> (a newer guest knows more tags).
    /// </summary>
    public static bool TryDecode(ReadOnlySpan<byte> buffer, ulong?[] values, out int unknownTags, out BalloonError error)
    {
        unknownTags = 0;
        error = default;
        if (values.Length < VirtioBalloon.StatTags) throw new ArgumentException($"values needs {VirtioBalloon.StatTags} slots", nameof(values));
        if (buffer.Length % VirtioBalloon.StatSize != 0)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"stats buffer of {buffer.Length} bytes is not a whole number of 10-byte {{le16 tag; le64 val}} entries");
        if (buffer.Length / VirtioBalloon.StatSize > MaxEntries)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.TooLarge, $"stats buffer of {buffer.Length / VirtioBalloon.StatSize} entries; at most {MaxEntries} are read");
        for (int off = 0; off < buffer.Length; off += VirtioBalloon.StatSize)
        {
            ushort tag = BinaryPrimitives.ReadUInt16LittleEndian(buffer[off..]);
            ulong val = BinaryPrimitives.ReadUInt64LittleEndian(buffer[(off + 2)..]);
            if (tag < VirtioBalloon.StatTags) values[tag] = val;
            else unknownTags++;
        }
        return true;
    }
}
