using System.Buffers.Binary;
using System.Numerics;
using VirtLab.Sdk.Machine;

namespace VirtLab.Plugins.Balloon.Protocol;

/// <summary>
/// Upstream PFN arrays: one device-readable buffer of little-endian u32 PFNs (4 KiB frames), at most
/// <see cref="VirtioBalloon.PfnsPerRequest"/> per request. A u32 PFN reaches 16 TiB of guest-physical space.
/// </summary>
public static class PfnArrayFormat
{
    public const long MaxPfn = uint.MaxValue;

    /// <summary>Writes <paramref name="pfns"/> as u32 LE; returns the bytes written.</summary>
    public static int Encode(ReadOnlySpan<long> pfns, Span<byte> destination)
    {
        if (pfns.Length > VirtioBalloon.PfnsPerRequest)
            throw new ArgumentException($"a PFN-array request carries at most {VirtioBalloon.PfnsPerRequest} PFNs; got {pfns.Length}", nameof(pfns));
        if (destination.Length < pfns.Length * 4)
            throw new ArgumentException($"{pfns.Length} PFNs need {pfns.Length * 4} bytes; the buffer has {destination.Length}", nameof(destination));
        for (int i = 0; i < pfns.Length; i++)
        {
            var p = pfns[i];
            if ((ulong)p > MaxPfn)
                throw new ArgumentOutOfRangeException(nameof(pfns), $"PFN 0x{p:x} does not fit the u32 of a PFN array (guest-physical 0x{(ulong)p << 12:x} is above 16 TiB)");
            BinaryPrimitives.WriteUInt32LittleEndian(destination[(i * 4)..], (uint)p);
        }
        return pfns.Length * 4;
    }

    /// <summary>Parses a request into single-page runs, or says why it is refused.</summary>
    public static bool TryDecode(ReadOnlySpan<byte> request, List<PageRun> runs, out BalloonError error)
    {
        error = default;
        if (request.Length == 0)
            return Fail(out error, BalloonErrorKind.Malformed, "empty PFN-array request (0 bytes); a request carries 1 … 256 u32 PFNs");
        if (request.Length % 4 != 0)
            return Fail(out error, BalloonErrorKind.Malformed, $"PFN-array request of {request.Length} bytes is not a whole number of u32 PFNs");
        if (request.Length / 4 > VirtioBalloon.PfnsPerRequest)
            return Fail(out error, BalloonErrorKind.TooLarge, $"PFN-array request of {request.Length / 4} PFNs; at most {VirtioBalloon.PfnsPerRequest} are allowed");
        for (int off = 0; off < request.Length; off += 4)
            runs.Add(new PageRun(BinaryPrimitives.ReadUInt32LittleEndian(request[off..]), 1));
        return true;
    }

    internal static bool Fail(out BalloonError error, BalloonErrorKind kind, string message)
    {
        error = new BalloonError(kind, message);
        return false;
    }
}

/// <summary>
/// The seed's page-bitmap format (feature <see cref="VirtioBalloon.F_PAGE_BITMAP"/>). A request is the device-readable
/// bytes of its chain: an 8-byte response header <c>{ u8 cmd; u8 flag; le16 id; le32 data_len; }</c> (cmd 0 = pages,
/// flag 0), then <c>data_len</c> bytes of bitmap headers. Each header is one le64:
/// <c>start_pfn</c> bits 0–51, <c>page_shift</c> bits 52–57 (≥ 12), <c>bmap_len</c> bits 58–63 = the number of le64
/// bitmap words that follow. Bit i of the bitmap (LSB first) stands for the 2^(page_shift−12) pages at
/// start_pfn + i·2^(page_shift−12); a zero <c>bmap_len</c> means the whole run of 2^(page_shift−12) pages from start_pfn.
/// </summary>
public static class PageBitmapFormat
{
    public const int ResponseHeaderSize = 8;
    /// <summary>The seed's BALLOON_BMAP_SIZE: the data buffer a driver fills per request.</summary>
    public const int DriverDataSize = 32 * 1024;
    /// <summary>The most data a device accepts in one request.</summary>
    public const int MaxDataSize = 64 * 1024;
    public const int MaxBitmapWords = 63;
    public const byte CmdPages = 0;
    public const long PfnLimit = 1L << 52;
    const ulong PfnMask = (1UL << 52) - 1;

    public static ulong Head(long startPfn, int pageShift, int bitmapWords)
    {
        if ((ulong)startPfn > PfnMask) throw new ArgumentOutOfRangeException(nameof(startPfn), $"start PFN 0x{startPfn:x} does not fit 52 bits");
        if (pageShift is < 12 or > 63) throw new ArgumentOutOfRangeException(nameof(pageShift), $"page shift must be 12 … 63; got {pageShift}");
        if (bitmapWords is < 0 or > MaxBitmapWords) throw new ArgumentOutOfRangeException(nameof(bitmapWords), $"bitmap length must be 0 … 63 words; got {bitmapWords}");
        return (ulong)startPfn | (ulong)pageShift << 52 | (ulong)bitmapWords << 58;
    }

    public static void WriteResponseHeader(Span<byte> destination, ushort id, int dataLength)
    {
        destination[0] = CmdPages;
        destination[1] = 0;
        BinaryPrimitives.WriteUInt16LittleEndian(destination[2..], id);
        BinaryPrimitives.WriteUInt32LittleEndian(destination[4..], (uint)dataLength);
    }

    /// <summary>
    /// Encodes the set pages of <paramref name="pages"/> (page i = PFN <paramref name="basePfn"/> + i) from word
    /// <paramref name="word"/> on into <paramref name="data"/>: runs of whole words become zero-length headers (power-of-two
    /// runs), stretches of partly set words become bitmap headers of up to 63 words. Returns the bytes written and
    /// advances <paramref name="word"/>; call again while <paramref name="word"/> is below the bitmap's word count.
    /// </summary>
    public static int Encode(DirtyBitmap pages, long basePfn, ref int word, Span<byte> data)
    {
        var w = pages.Words;
        int pos = 0;
        while (word < w.Length)
        {
            ulong x = LiveWord(pages, word);
            if (x == 0) { word++; continue; }
            if (x == ulong.MaxValue)
            {
                int end = word + 1;
                while (end < w.Length && LiveWord(pages, end) == ulong.MaxValue) end++;
                long start = basePfn + (long)word * 64, count = (long)(end - word) * 64;
                // Power-of-two pieces; stop when the buffer is full and resume at the first word not sent.
                long sent = 0;
                while (sent < count)
                {
                    if (data.Length - pos < 8) { word += (int)(sent / 64); return pos; }
                    long left = count - sent;
                    int log = 63 - BitOperations.LeadingZeroCount((ulong)left);
                    log = Math.Min(log, 51);
                    BinaryPrimitives.WriteUInt64LittleEndian(data[pos..], Head(start + sent, 12 + log, 0));
                    pos += 8;
                    sent += 1L << log;
                }
                word = end;
                continue;
            }
            int n = 1;
            while (word + n < w.Length && n < MaxBitmapWords && LiveWord(pages, word + n) is var y && y != 0 && y != ulong.MaxValue) n++;
            if (data.Length - pos < 16) return pos;
            n = Math.Min(n, (data.Length - pos - 8) / 8);
            BinaryPrimitives.WriteUInt64LittleEndian(data[pos..], Head(basePfn + (long)word * 64, 12, n));
            pos += 8;
            for (int k = 0; k < n; k++, pos += 8) BinaryPrimitives.WriteUInt64LittleEndian(data[pos..], LiveWord(pages, word + k));
            word += n;
        }
        return pos;
    }

    /// <summary>A word with the bits past the bitmap's last page masked off.</summary>
    static ulong LiveWord(DirtyBitmap b, int i)
    {
        var x = b.Words[i];
        if (i == b.Words.Length - 1 && (b.Pages & 63) != 0) x &= (1UL << (int)(b.Pages & 63)) - 1;
        return x;
    }

    /// <summary>Parses a request (response header + data) into runs, or says why it is refused.</summary>
    public static bool TryDecode(ReadOnlySpan<byte> request, List<PageRun> runs, out BalloonError error)
    {
        error = default;
        if (request.Length < ResponseHeaderSize)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"page-bitmap request of {request.Length} bytes is shorter than its 8-byte response header");
        byte cmd = request[0], flag = request[1];
        uint dataLen = BinaryPrimitives.ReadUInt32LittleEndian(request[4..]);
        if (cmd != CmdPages || flag != 0)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"page-bitmap response header cmd {cmd}, flag {flag}; only cmd 0 (pages) with flag 0 is defined");
        long avail = request.Length - ResponseHeaderSize;
        if (dataLen > MaxDataSize)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.TooLarge, $"page-bitmap data_len {dataLen} bytes; at most {MaxDataSize} are allowed");
        if (dataLen > avail)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.TooLarge, $"page-bitmap data_len {dataLen} bytes but the descriptors hold only {avail} after the header");
        if (dataLen < avail)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"page-bitmap data_len {dataLen} bytes but the descriptors hold {avail} after the header; they must agree");
        if (dataLen == 0 || dataLen % 8 != 0)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"page-bitmap data_len {dataLen} is not a positive multiple of 8 (one le64 per bitmap header or word)");
        var data = request.Slice(ResponseHeaderSize, (int)dataLen);
        for (int pos = 0; pos < data.Length;)
        {
            ulong head = BinaryPrimitives.ReadUInt64LittleEndian(data[pos..]);
            long start = (long)(head & PfnMask);
            int shift = (int)(head >> 52) & 63, len = (int)(head >> 58);
            if (shift < 12)
                return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"bitmap header at byte {pos}: page_shift {shift} is below 12 (4 KiB)");
            long unit = 1L << (shift - 12);
            pos += 8;
            if (len == 0)
            {
                if (start > PfnLimit - unit)
                    return PfnArrayFormat.Fail(out error, BalloonErrorKind.Overflow, $"bitmap header at byte {pos - 8}: run of 2^{shift - 12} pages from PFN 0x{start:x} overflows the 52-bit PFN space");
                runs.Add(new PageRun(start, unit));
                continue;
            }
            if ((long)len * 8 > data.Length - pos)
                return PfnArrayFormat.Fail(out error, BalloonErrorKind.PastBuffer, $"bitmap header at byte {pos - 8}: bmap_len {len} words runs past the end of the {data.Length}-byte data");
            // The last unit any bit could name must stay inside the PFN space.
            if ((Int128)start + (Int128)64 * len * unit > PfnLimit)
                return PfnArrayFormat.Fail(out error, BalloonErrorKind.Overflow, $"bitmap header at byte {pos - 8}: {len} words of 2^{shift - 12}-page units from PFN 0x{start:x} overflow the 52-bit PFN space");
            long runStart = -1, runEnd = -1;
            for (int k = 0; k < len; k++, pos += 8)
            {
                ulong bits = BinaryPrimitives.ReadUInt64LittleEndian(data[pos..]);
                while (bits != 0)
                {
                    int b = BitOperations.TrailingZeroCount(bits);
                    bits &= bits - 1;
                    long s = start + ((long)k * 64 + b) * unit;
                    if (s == runEnd) runEnd += unit;
                    else
                    {
                        if (runStart >= 0) runs.Add(new PageRun(runStart, runEnd - runStart));
                        runStart = s;
                        runEnd = s + unit;
                    }
                }
            }
            if (runStart >= 0) runs.Add(new PageRun(runStart, runEnd - runStart));
        }
        return true;
    }
}

/// <summary>
/// Page ranges (feature <see cref="VirtioBalloon.F_PAGE_RANGES"/>): one device-readable buffer of
/// <c>{ le64 start_pfn; le64 pages; }</c> entries, at most <see cref="MaxEntries"/> per request.
/// </summary>
public static class PageRangeFormat
{
    public const int EntrySize = 16;
    /// <summary>32 KiB of entries per request, as the bitmap transport's data buffer.</summary>
    public const int DriverEntries = 2048;
    public const int MaxEntries = 4096;

    public static int Encode(ReadOnlySpan<PageRun> ranges, Span<byte> destination)
    {
        if (ranges.Length > MaxEntries) throw new ArgumentException($"a range request carries at most {MaxEntries} entries; got {ranges.Length}", nameof(ranges));
        for (int i = 0; i < ranges.Length; i++)
        {
            BinaryPrimitives.WriteUInt64LittleEndian(destination[(i * EntrySize)..], (ulong)ranges[i].First);
            BinaryPrimitives.WriteUInt64LittleEndian(destination[(i * EntrySize + 8)..], (ulong)ranges[i].Count);
        }
        return ranges.Length * EntrySize;
    }

    public static bool TryDecode(ReadOnlySpan<byte> request, List<PageRun> runs, out BalloonError error)
    {
        error = default;
        if (request.Length == 0 || request.Length % EntrySize != 0)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"range request of {request.Length} bytes is not a positive number of 16-byte {{start_pfn, pages}} entries");
        if (request.Length / EntrySize > MaxEntries)
            return PfnArrayFormat.Fail(out error, BalloonErrorKind.TooLarge, $"range request of {request.Length / EntrySize} entries; at most {MaxEntries} are allowed");
        for (int off = 0; off < request.Length; off += EntrySize)
        {
            ulong start = BinaryPrimitives.ReadUInt64LittleEndian(request[off..]);
            ulong pages = BinaryPrimitives.ReadUInt64LittleEndian(request[(off + 8)..]);
            if (pages == 0)
                return PfnArrayFormat.Fail(out error, BalloonErrorKind.Malformed, $"range entry {off / EntrySize}: 0 pages from PFN 0x{start:x}; a range holds at least one page");
            if (start >= PageBitmapFormat.PfnLimit || pages > (ulong)PageBitmapFormat.PfnLimit - start)
                return PfnArrayFormat.Fail(out error, BalloonErrorKind.Overflow, $"range entry {off / EntrySize}: {pages} pages from PFN 0x{start:x} overflow the 52-bit PFN space");
            runs.Add(new PageRun((long)start, (long)pages));
        }
        return true;
    }

    /// <summary>Coalesces sorted PFNs into maximal runs.</summary>
    public static void Coalesce(ReadOnlySpan<long> sortedPfns, List<PageRun> into)
    {
        int i = 0;
        while (i < sortedPfns.Length)
        {
            int j = i + 1;
            while (j < sortedPfns.Length && sortedPfns[j] == sortedPfns[j - 1] + 1) j++;
            into.Add(new PageRun(sortedPfns[i], j - i));
            i = j;
        }
    }
}
