using System.Runtime.InteropServices;
using System.Text;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>How a KVM statistic behaves (KVM_STATS_TYPE_*).</summary>
public enum KvmStatType
{
    /// <summary>Only grows (KVM_STATS_TYPE_CUMULATIVE).</summary>
    Cumulative = 0,
    /// <summary>The current value (KVM_STATS_TYPE_INSTANT).</summary>
    Instant = 1,
    /// <summary>The highest value seen (KVM_STATS_TYPE_PEAK).</summary>
    Peak = 2,
    /// <summary>Buckets of equal width (KVM_STATS_TYPE_LINEAR_HIST).</summary>
    LinearHistogram = 3,
    /// <summary>Buckets of doubling width (KVM_STATS_TYPE_LOG_HIST).</summary>
    LogHistogram = 4,
}

/// <summary>Unit of a KVM statistic (KVM_STATS_UNIT_*).</summary>
public enum KvmStatUnit
{
    /// <summary>A count.</summary>
    None = 0,
    /// <summary>Bytes.</summary>
    Bytes = 1,
    /// <summary>Seconds (scaled by the descriptor's exponent).</summary>
    Seconds = 2,
    /// <summary>CPU cycles.</summary>
    Cycles = 3,
    /// <summary>0 or 1.</summary>
    Boolean = 4,
}

/// <summary>One descriptor of a binary stats fd (struct kvm_stats_desc).</summary>
public sealed record KvmStatDescriptor(string Name, KvmStatType Type, KvmStatUnit Unit, bool Pow2Base, short Exponent, int Size, uint Offset, uint BucketSize);

/// <summary>
/// A binary statistics fd (KVM_GET_STATS_FD on a VM or vCPU fd): the header and descriptors are read once,
/// values are re-read with pread at each snapshot.
/// </summary>
public sealed class KvmStats : IDisposable
{
    private readonly KvmFd _fd;
    private readonly uint _dataOffset;
    private readonly int _dataSize;
    private readonly Dictionary<string, KvmStatDescriptor> _byName = new();

    /// <summary>The stats id string from the header (e.g. "kvm-1234" or "kvm-1234/vcpu-0").</summary>
    public string Id { get; }
    /// <summary>Every statistic the fd describes.</summary>
    public IReadOnlyList<KvmStatDescriptor> Descriptors { get; }

    internal KvmStats(KvmFd owner, string what)
    {
        _fd = owner.IoctlFd(KvmIoctl.KVM_GET_STATS_FD, 0, $"stats of {what}");
        try
        {
            var header = new byte[Marshal.SizeOf<kvm_stats_header>()];
            ReadExact(header, 0, "header");
            var h = MemoryMarshal.Read<kvm_stats_header>(header);
            var id = new byte[h.name_size];
            ReadExact(id, h.id_offset, "id");
            Id = Encoding.ASCII.GetString(id).TrimEnd('\0');

            int fixedSize = Marshal.SizeOf<kvm_stats_desc>(), descSize = fixedSize + (int)h.name_size;
            var all = new byte[descSize * h.num_desc];
            ReadExact(all, h.desc_offset, "descriptors");
            var list = new List<KvmStatDescriptor>();
            int end = 0;
            for (int i = 0; i < h.num_desc; i++)
            {
                var entry = all.AsSpan(i * descSize, descSize);
                var d = MemoryMarshal.Read<kvm_stats_desc>(entry);
                var name = Encoding.ASCII.GetString(entry.Slice(fixedSize, (int)h.name_size)).Split('\0')[0];
                var desc = new KvmStatDescriptor(name, (KvmStatType)(d.flags & 0xF), (KvmStatUnit)((d.flags >> 4) & 0xF),
                    ((d.flags >> 8) & 0xF) == 1, d.exponent, d.size, d.offset, d.bucket_size);
                list.Add(desc);
                _byName[name] = desc;
                end = Math.Max(end, (int)d.offset + d.size * 8);
            }
            Descriptors = list;
            _dataOffset = h.data_offset;
            _dataSize = end;
        }
        catch
        {
            _fd.Dispose();
            throw;
        }
    }

    private void ReadExact(Span<byte> buf, long offset, string what)
    {
        nint n;
        // Safe because pread writes at most buf.Length bytes into the pinned span.
        unsafe { fixed (byte* p = buf) n = LibcKvm.Pread(_fd.Fd, p, (nuint)buf.Length, offset); }
        if (n < 0) throw KvmException.Last("pread(stats fd)", what);
        if (n != buf.Length) throw new IOException($"short read of KVM stats {what}: {n} of {buf.Length} bytes");
    }

    /// <summary>Whether a statistic of that name exists.</summary>
    public bool Has(string name) => _byName.ContainsKey(name);

    /// <summary>Current value of a scalar statistic (first bucket of a histogram).</summary>
    public ulong Read(string name)
    {
        if (!_byName.TryGetValue(name, out var d))
            throw new KeyNotFoundException($"no KVM statistic '{name}' in {Id}; available: {string.Join(", ", _byName.Keys)}");
        ulong v = 0;
        ReadExact(MemoryMarshal.AsBytes(new Span<ulong>(ref v)), _dataOffset + d.Offset, name);
        return v;
    }

    /// <summary>Every value at this moment (histograms as their bucket arrays).</summary>
    public KvmStatsSnapshot Snapshot()
    {
        var data = new byte[_dataSize];
        ReadExact(data, _dataOffset, "data");
        var values = new Dictionary<string, ulong[]>(Descriptors.Count);
        foreach (var d in Descriptors)
        {
            var arr = new ulong[d.Size];
            for (int k = 0; k < d.Size; k++) arr[k] = BitConverter.ToUInt64(data, (int)d.Offset + k * 8);
            values[d.Name] = arr;
        }
        return new KvmStatsSnapshot(Id, DateTime.UtcNow, Descriptors, values);
    }

    /// <inheritdoc/>
    public void Dispose() => _fd.Dispose();

    /// <summary>Whether the fd is closed (its VM or vCPU was disposed).</summary>
    internal bool IsClosed => _fd.IsClosed;

    /// <inheritdoc/>
    public override string ToString() => $"KVM stats {Id}: {Descriptors.Count} statistics (Read(name), Snapshot())";
}

/// <summary>All values of one stats fd at one moment.</summary>
public sealed class KvmStatsSnapshot
{
    /// <summary>The stats fd's id string (e.g. kvm-1234).</summary>
    public string Id { get; }
    /// <summary>When the snapshot was read.</summary>
    public DateTime TakenUtc { get; }
    /// <summary>The statistics read.</summary>
    public IReadOnlyList<KvmStatDescriptor> Descriptors { get; }
    /// <summary>Values by statistic name (one element, or a histogram's buckets).</summary>
    public IReadOnlyDictionary<string, ulong[]> Values { get; }

    internal KvmStatsSnapshot(string id, DateTime taken, IReadOnlyList<KvmStatDescriptor> descs, IReadOnlyDictionary<string, ulong[]> values)
    {
        Id = id; TakenUtc = taken; Descriptors = descs; Values = values;
    }

    /// <summary>Scalar value (sum of buckets for histograms).</summary>
    public ulong this[string name] => Values.TryGetValue(name, out var v)
        ? (v.Length == 1 ? v[0] : v.Aggregate(0ul, (a, b) => a + b))
        : throw new KeyNotFoundException($"no KVM statistic '{name}' in {Id}");

    /// <summary>What changed from <paramref name="before"/> to this snapshot.</summary>
    public KvmStatsDelta Since(KvmStatsSnapshot before) => KvmStatsDelta.Between(before, this);
}

/// <summary>One counter that changed between two snapshots.</summary>
public sealed record KvmStatChange(string Name, KvmStatType Type, ulong Before, ulong After)
{
    /// <summary>After − Before (negative for instant values that fell).</summary>
    public long Delta => (long)(After - Before);
}

/// <summary>Counters that changed between two snapshots of the same stats fd (a table when displayed).</summary>
public sealed class KvmStatsDelta
{
    /// <summary>The stats fd's id string.</summary>
    public string Id { get; }
    /// <summary>Time between the two snapshots.</summary>
    public TimeSpan Elapsed { get; }
    /// <summary>The statistics whose value changed.</summary>
    public IReadOnlyList<KvmStatChange> Changes { get; }

    private KvmStatsDelta(string id, TimeSpan elapsed, IReadOnlyList<KvmStatChange> changes)
    {
        Id = id; Elapsed = elapsed; Changes = changes;
    }

    internal static KvmStatsDelta Between(KvmStatsSnapshot a, KvmStatsSnapshot b)
    {
        var list = new List<KvmStatChange>();
        foreach (var d in b.Descriptors)
        {
            if (!a.Values.ContainsKey(d.Name)) continue;
            ulong x = a[d.Name], y = b[d.Name];
            if (x != y) list.Add(new KvmStatChange(d.Name, d.Type, x, y));
        }
        return new KvmStatsDelta(b.Id, b.TakenUtc - a.TakenUtc, list);
    }

    /// <summary>Change of one counter (0 when it did not change).</summary>
    public long this[string name] => Changes.FirstOrDefault(c => c.Name == name)?.Delta ?? 0;

    /// <inheritdoc/>

    public override string ToString() => string.Join(", ", Changes.Select(c => $"{c.Name} {(c.Delta >= 0 ? "+" : "")}{c.Delta}"));
}
