using System.Numerics;
using System.Runtime.InteropServices;
using FsCheck;
using FsCheck.Fluent;
using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Plugins.Vfio.Uapi;
using Xunit;
using static VirtLab.Sdk.Native.Errno;
using U = VirtLab.Plugins.Vfio.Uapi.VfioUapi;
using VirtLab.Tests;

namespace VirtLab.Plugins.Vfio.Tests;

/// <summary>
/// Random and boundary ioctls against the byte-level entry, each compared with an oracle: a plain transcription of
/// the kernel's checks over a list of mappings (written apart from the model, linear scans, 128-bit arithmetic).
/// Every call must return the oracle's errno, never throw, and never write a byte outside the caller's bitmap: the
/// user region sits between guard bytes that are not user memory, and inside it only the bytes the report may
/// cover ([data, data + DIRTY_BITMAP_BYTES(pages))) may change.
/// </summary>
public class IoctlFuzzProperties
{
    const ulong P = 4096;
    const int OpsPerCase = 24, Cases = 450;   // 10,800 ioctls per run
    static int calls;
    static readonly Dictionary<(uint, long), int> outcomes = [];

    [Fact]
    public void Every_ioctl_returns_the_kernels_errno_and_writes_only_inside_the_bitmap()
    {
        calls = 0;
        outcomes.Clear();
        Prop.ForAll(Arb.From(Gen.Choose(0, int.MaxValue)), seed => { RunCase(seed); return true; })
            .Check(PropertyRuns.Quick.WithMaxTest(Cases));
        Assert.True(calls >= 10_000, $"only {calls} ioctls were generated");
        // the generator reaches the success paths and the faults, not only the early EINVALs
        int N(uint req, long ret) => outcomes.GetValueOrDefault((req, ret));
        var table = string.Join(", ", outcomes.OrderBy(k => k.Key).Select(k => $"{U.IoctlName(k.Key.Item1)} {k.Key.Item2}: {k.Value}"));
        Assert.True(N(U.IommuMapDma, 0) > 500 && N(U.IommuMapDma, -EEXIST) > 100, table);
        Assert.True(N(U.IommuDirtyPages, 0) > 500 && N(U.IommuDirtyPages, -EFAULT) > 20 && N(U.IommuDirtyPages, -EACCES) > 20, table);
        Assert.True(N(U.IommuUnmapDma, 0) > 200 && N(U.IommuUnmapDma, -EFAULT) > 10, table);
        Assert.True(N(U.IommuGetInfo, 0) > 20 && N(U.IommuGetInfo, -EFAULT) > 5, table);
    }

    sealed class Oracle(bool iommuSet, bool v2, int dmaLimit)
    {
        public readonly List<(ulong Iova, ulong Size)> Maps = [];
        public bool Tracking;
        int avail = dmaLimit;

        static UInt128 End((ulong Iova, ulong Size) m) => (UInt128)m.Iova + m.Size;

        public long Map(ReadOnlySpan<byte> a)
        {
            if (!iommuSet) return -EINVAL;
            if (a.Length < 32) return -EFAULT;
            uint argsz = U.Get32(a, 0), flags = U.Get32(a, 4);
            ulong vaddr = U.Get64(a, 8), iova = U.Get64(a, 16), size = U.Get64(a, 24);
            if (argsz < 32 || (flags & ~7u) != 0) return -EINVAL;
            var setVaddr = (flags & 4) != 0;
            var prot = flags & 3;
            if ((prot != 0 && setVaddr) || (prot == 0 && !setVaddr)) return -EINVAL;
            if (size == 0 || ((size | iova | vaddr) & (P - 1)) != 0) return -EINVAL;
            if ((UInt128)iova + size - 1 > ulong.MaxValue || (UInt128)vaddr + size - 1 > ulong.MaxValue) return -EINVAL;
            var overlap = Maps.Any(m => iova < End(m) && m.Iova < (UInt128)iova + size);
            if (setVaddr) return overlap ? -EINVAL : -ENOENT;   // mdev containers never have an invalidated vaddr
            if (overlap) return -EEXIST;
            if (avail == 0) return -ENOSPC;
            if (Tracking && size / P > int.MaxValue) return -EINVAL;
            Maps.Add((iova, size));
            Maps.Sort();
            avail--;
            return 0;
        }

        (ulong Iova, ulong Size)? Containing(ulong addr, bool strict)
            => Maps.Cast<(ulong, ulong)?>().FirstOrDefault(m => (strict ? m!.Value.Item1 < addr : m!.Value.Item1 <= addr) && addr < End(m!.Value));

        bool Cuts(ulong iova, ulong size)
            => Containing(iova, false) is { } f && f.Iova != iova
               || Containing(iova + size - 1, true) is { } l && End(l) != (UInt128)iova + size;

        /// <summary>update_user_bitmap's reach for each mapping from base: false when the words lie outside the user region.</summary>
        static bool Reaches((ulong Iova, ulong Size) m, ulong baseIova, ulong accessible)
        {
            var nbits = m.Size / P;
            var bitOffset = (m.Iova - baseIova) / P;
            var lim = (nbits + bitOffset % 64 + 63) / 64;
            return (UInt128)(bitOffset / 64 + lim) * 8 <= accessible;
        }

        public long Unmap(ReadOnlySpan<byte> a, Func<ulong, ulong> accessibleAt)
        {
            if (!iommuSet) return -EINVAL;
            if (a.Length < 24) return -EFAULT;
            uint argsz = U.Get32(a, 0), flags = U.Get32(a, 4);
            ulong iova = U.Get64(a, 8), size = U.Get64(a, 16);
            if (argsz < 24 || (flags & ~7u) != 0) return -EINVAL;
            var get = (flags & 1) != 0;
            if (get && (flags & 6) != 0) return -EINVAL;
            VfioBitmap bm = default;
            if (get)
            {
                if (argsz < 48) return -EINVAL;
                if (a.Length < 48) return -EFAULT;
                bm = VfioBitmap.ReadFrom(a[24..]);
                if (!AccessOk(bm.Data, bm.Size)) return -EINVAL;
                if (!BitmapSizeOk(size >> BitOperations.TrailingZeroCount(bm.PgSize), bm.Size)) return -EINVAL;
            }
            if ((flags & 4) != 0) return -EBUSY;            // FLAG_VADDR with an mdev group
            if ((iova & (P - 1)) != 0) return -EINVAL;
            var all = (flags & 2) != 0;
            if (all) { if (iova != 0 || size != 0) return -EINVAL; size = ulong.MaxValue; }
            else if (size == 0 || (size & (P - 1)) != 0 || (UInt128)iova + size - 1 > ulong.MaxValue) return -EINVAL;
            if (get && (!Tracking || bm.PgSize != P)) return -EINVAL;
            if (v2 && !all && Cuts(iova, size)) return -EINVAL;
            foreach (var m in Maps.ToArray())
            {
                if (End(m) <= iova) continue;
                if (m.Iova >= (UInt128)iova + size) break;
                if (!v2 && iova > m.Iova) break;
                if (get && !Reaches(m, iova, accessibleAt(bm.Data))) return -EFAULT;
                Maps.Remove(m);
                avail++;
            }
            return 0;
        }

        public long Dirty(ReadOnlySpan<byte> a, Func<ulong, ulong> accessibleAt)
        {
            if (!iommuSet) return -EINVAL;
            if (!v2) return -EACCES;
            if (a.Length < 8) return -EFAULT;
            uint argsz = U.Get32(a, 0), flags = U.Get32(a, 4);
            if (argsz < 8 || (flags & ~7u) != 0) return -EINVAL;
            if (BitOperations.PopCount(flags) != 1) return -EINVAL;
            if (flags == 1)
            {
                if (!Tracking && Maps.Any(m => m.Size / P > int.MaxValue)) return -EINVAL;
                Tracking = true;
                return 0;
            }
            if (flags == 2) { Tracking = false; return 0; }
            if (argsz - 8 < 40) return -EINVAL;
            if (a.Length < 48) return -EFAULT;
            ulong iova = U.Get64(a, 8), size = U.Get64(a, 16);
            var bm = VfioBitmap.ReadFrom(a[24..]);
            if ((UInt128)iova + size > ulong.MaxValue) return -EINVAL;
            if (!AccessOk(bm.Data, bm.Size)) return -EINVAL;
            if (!BitmapSizeOk(size >> BitOperations.TrailingZeroCount(bm.PgSize), bm.Size)) return -EINVAL;
            if (bm.PgSize != P || (iova & (P - 1)) != 0 || size == 0 || (size & (P - 1)) != 0 || !Tracking) return -EINVAL;
            if (Cuts(iova, size)) return -EINVAL;
            foreach (var m in Maps)
                if (m.Iova >= iova && m.Iova <= iova + size - 1 && !Reaches(m, iova, accessibleAt(bm.Data))) return -EFAULT;
            return 0;
        }

        public long Info(ReadOnlySpan<byte> a)
        {
            if (!iommuSet) return -EINVAL;
            if (a.Length < 16) return -EFAULT;
            var argsz = U.Get32(a, 0);
            if (argsz < 16) return -EINVAL;
            const int chain = 24 + 32 + 16;                 // migration + dma_avail, no IOVA ranges without a domain
            if (argsz >= chain && a.Length < chain) return -EFAULT;
            if (a.Length < Math.Min(argsz, 24)) return -EFAULT;
            return 0;
        }

        static bool AccessOk(ulong addr, ulong size) => (UInt128)addr + size <= U.TaskSizeMax;

        static bool BitmapSizeOk(ulong npages, ulong bytes)
            => npages != 0 && bytes != 0 && bytes <= (256UL << 20) && (UInt128)bytes >= ((UInt128)npages + 63) / 64 * 8;
    }

    static readonly ulong[] Iovas = [0, 1, P - 1, P, 1UL << 32, (1UL << 39) - P, 1UL << 63, ulong.MaxValue - P + 1, ulong.MaxValue];
    static readonly ulong[] Sizes = [0, 1, P - 1, P + 1, (ulong)int.MaxValue * P, (ulong)int.MaxValue * P + P, 1UL << 63, ulong.MaxValue - P + 1, ulong.MaxValue];

    static unsafe void RunCase(int seed)
    {
        var r = new Random(seed);
        var iommuSet = r.Next(20) != 0;
        var v2 = r.Next(10) != 0;
        var limit = r.Next(4) == 0 ? r.Next(1, 4) : U.DmaEntryLimit;
        using var c = new VfioContainer(null, limit);
        c.AddGroup(VfioGroup.Emulated());
        if (iommuSet) c.SetIommu(v2 ? U.Type1v2Iommu : U.Type1Iommu);
        var o = new Oracle(iommuSet, v2, limit);

        // the user bitmap region between two guards that are not user memory
        var regionLen = new[] { 0, 8, 16, 24, 64, 520, 4096 }[r.Next(7)];
        const int guard = 64;
        var block = (byte*)NativeMemory.Alloc((nuint)(regionLen + 2 * guard));
        try
        {
            var region = block + guard;
            using var reg = regionLen > 0 ? c.User.Register((nint)region, regionLen) : null;
            var regionAddr = (ulong)region;
            ulong AccessibleAt(ulong addr) => regionLen > 0 && addr >= regionAddr && addr - regionAddr < (ulong)regionLen ? (ulong)regionLen - (addr - regionAddr) : 0;
            var before = new byte[regionLen + 2 * guard];

            for (var i = 0; i < OpsPerCase; i++)
            {
                new Span<byte>(block, before.Length).Fill(0xA5);
                new Span<byte>(block, before.Length).CopyTo(before);
                var (req, arg, len, bm, pages) = NextOp(r, o, regionAddr, regionLen);
                var span = arg.AsSpan(0, len);
                long expected = req switch
                {
                    _ when req == U.IommuMapDma => o.Map(span),
                    _ when req == U.IommuUnmapDma => o.Unmap(span, AccessibleAt),
                    _ when req == U.IommuDirtyPages => o.Dirty(span, AccessibleAt),
                    _ when req == U.IommuGetInfo => o.Info(span),
                    _ => iommuSet ? -ENOTTY : -EINVAL,
                };
                long got;
                try { got = c.Ioctl(req, span); }
                catch (Exception e) { throw new Exception($"seed {seed} op {i}: {U.IoctlName(req)} threw {e}"); }
                calls++;
                outcomes[(req, got)] = outcomes.GetValueOrDefault((req, got)) + 1;
                if (got != expected)
                    throw new Exception($"seed {seed} op {i}: {U.IoctlName(req)} returned {got}, the kernel returns {expected} ({VfioContainer.LastError}); arg {Convert.ToHexString(span)}");

                // guards untouched; inside the region only [data, data + min(claimed, needed)) may change
                var after = new ReadOnlySpan<byte>(block, before.Length);
                var allowedFrom = bm.Data - regionAddr + guard;
                var allowedLen = Math.Min(bm.Size, U.DirtyBitmapBytes(pages));
                for (var b = 0; b < before.Length; b++)
                {
                    if (after[b] == before[b]) continue;
                    var inside = bm.Data >= regionAddr && (ulong)b >= allowedFrom && (ulong)b - allowedFrom < allowedLen && b >= guard && b < guard + regionLen;
                    if (!inside)
                        throw new Exception($"seed {seed} op {i}: {U.IoctlName(req)} wrote byte {b - guard} of a {regionLen}-byte region (data at +{(long)(bm.Data - regionAddr)}, claimed {bm.Size}, {pages} pages)");
                }
            }
            Assert.Equal(o.Maps, c.Dmas.Select(d => (d.Iova, d.Size)).ToList());
        }
        finally { NativeMemory.Free(block); }
    }

    static ulong Pick(Random r, ulong[] boundary, int pagesWindow)
        => r.Next(10) switch
        {
            < 6 => (ulong)r.Next(pagesWindow) * P,
            < 9 => boundary[r.Next(boundary.Length)],
            _ => (ulong)r.NextInt64() * 2 + (ulong)r.Next(2),
        };

    static (uint Req, byte[] Arg, int Len, VfioBitmap Bm, ulong Pages) NextOp(Random r, Oracle o, ulong region, int regionLen)
    {
        var roll = r.Next(100);
        ulong iova = Pick(r, Iovas, 96), size = r.Next(3) == 0 ? Pick(r, Sizes, 40) : (ulong)r.Next(1, 40) * P;
        uint Flags(uint valid) => r.Next(10) switch { < 7 => valid, < 9 => (uint)r.Next(16), _ => (uint)r.Next() };
        uint? Argsz(int good) => r.Next(8) == 0 ? (uint)r.Next(0, good + 16) : r.Next(30) == 0 ? uint.MaxValue : null;
        int Len(int full) => r.Next(12) == 0 ? r.Next(0, full) : full;
        VfioBitmap Bitmap(ulong pages)
        {
            var need = U.DirtyBitmapBytes(pages);
            ulong pg = r.Next(8) switch { 0 => 0, 1 => 2 * P, 2 => 1UL << 21, _ => P };
            ulong bsize = r.Next(8) switch { 0 => 0, 1 => need > 8 ? need - 8 : 0, 2 => 1UL << 40, 3 => (ulong)r.Next(1, 5000), _ => need };
            ulong data = r.Next(10) switch
            {
                0 => 0,
                1 => (ulong)r.NextInt64(),
                2 => U.TaskSizeMax - 8,
                3 => region + (ulong)r.Next(0, Math.Max(1, regionLen)),   // possibly unaligned, possibly near the end
                _ => region + (ulong)(r.Next(0, Math.Max(1, regionLen / 8)) * 8),
            };
            return new VfioBitmap(pg, bsize, data);
        }

        if (roll < 35)
        {
            var a = U.DmaMap(iova, r.Next(6) == 0 ? Pick(r, Iovas, 4) : 0x10_0000_0000, size, Flags(3), Argsz(32) ?? 32);
            return (U.IommuMapDma, a, Len(a.Length), default, 0);
        }
        if (roll < 55)
        {
            var flags = Flags(r.Next(3) == 0 ? U.DmaUnmapFlagGetDirtyBitmap : r.Next(8) == 0 ? U.DmaUnmapFlagAll : 0);
            var bm = Bitmap(size / P);
            var a = U.DmaUnmap(r.Next(8) == 0 && (flags & 2) != 0 ? 0 : iova, (flags & 2) != 0 && r.Next(2) == 0 ? 0 : size, flags, bm, Argsz(48));
            return (U.IommuUnmapDma, a, Len(a.Length), (flags & 1) != 0 ? bm : default, size / P);
        }
        if (roll < 92)
        {
            var which = r.Next(10) switch { < 2 => U.DirtyPagesFlagStart, 2 => U.DirtyPagesFlagStop, _ => U.DirtyPagesFlagGetBitmap };
            // ranges covering whole mappings most of the time, so success paths run too
            if (which == U.DirtyPagesFlagGetBitmap && o.Maps.Count > 0 && r.Next(2) == 0)
            {
                var first = o.Maps[r.Next(o.Maps.Count)];
                var last = o.Maps.Last(m => m.Iova >= first.Iova);
                iova = first.Iova - (ulong)r.Next(0, 3) * P * (first.Iova >= 2 * P ? 1UL : 0);
                size = last.Iova + last.Size - iova + (ulong)r.Next(0, 3) * P;
            }
            var bm = Bitmap(size / P);
            var a = U.DirtyPagesGetBitmap(iova, size, bm, Flags(which), Argsz(48));
            return (U.IommuDirtyPages, a, Len(a.Length), bm, size / P);
        }
        if (roll < 98)
        {
            var a = U.IommuInfo((uint)r.Next(0, 100));
            return (U.IommuGetInfo, a, Len(a.Length), default, 0);
        }
        return (U.IommuEnable + (uint)r.Next(2) * 0x100, new byte[16], 16, default, 0);
    }
}
