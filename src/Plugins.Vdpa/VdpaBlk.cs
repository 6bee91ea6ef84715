using System.Buffers.Binary;
using System.Diagnostics;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk;
using VirtLab.Sdk.Virtio;

namespace VirtLab.Plugins.Vdpa;

/// <summary>Options of a virtio-blk driver over vhost-vdpa.</summary>
public sealed record VdpaBlkOptions : VdpaOptions
{
    /// <summary>The RAM disk's size (vdpa_sim: 128 MiB).</summary>
    public long CapacityBytes { get; init; } = 128L << 20;
    /// <summary>The largest request the driver issues (its data buffer per request slot).</summary>
    public int MaxRequestBytes { get; init; } = 64 << 10;
    /// <summary>Requests in flight at once.</summary>
    public int Depth { get; init; } = 16;
    public VdpaBlkOptions() { QueueSize = 128; }
}

/// <summary>One block throughput measurement.</summary>
public sealed record BlockResult(string Operation, int RequestBytes, long Requests, long Bytes, TimeSpan Elapsed, long Kicks, long Interrupts) : IDisplayable
{
    public double MiBPerSecond => Bytes / Elapsed.TotalSeconds / (1 << 20);
    public double RequestsPerSecond => Requests / Elapsed.TotalSeconds;

    public IRenderable ToRenderable()
    {
        var t = new Table().AddColumn("op").AddColumn("request").AddColumn("requests").AddColumn("MiB/s").AddColumn("IOPS").AddColumn("kicks").AddColumn("interrupts");
        t.AddRow(Operation, $"{RequestBytes / 1024} KiB", Requests.ToString("N0"), MiBPerSecond.ToString("F1"), RequestsPerSecond.ToString("N0"),
            Kicks.ToString("N0"), Interrupts.ToString("N0"));
        return t;
    }
}

/// <summary>A block request failed with the device's status byte.</summary>
public sealed class VirtioBlkException(byte status, string message) : IOException(message)
{
    public byte Status { get; } = status;
}

/// <summary>
/// A virtio-blk driver over vhost-vdpa on a vdpa_sim-like RAM disk: each request is a readable 16-byte
/// virtio_blk_outhdr, the data (readable for OUT, writable for IN and GET_ID) and a writable status byte.
/// <c>var disk = vm.Attach(Vdpa.Block()); disk.Write(0, data); disk.Read(0, 4096);</c>
/// </summary>
public sealed class VdpaBlk : VdpaDriver
{
    const int StatusBytes = 16;   // one status byte per slot, kept 16 bytes apart
    readonly VdpaBlkOptions blk;
    ulong hdrBase, dataBase, statusBase;
    readonly Stack<int> free = new();

    public VdpaBlk(VdpaBlkOptions? options = null, string name = "vdpa-blk") : this(options ?? new VdpaBlkOptions(), name, 0) { }

    VdpaBlk(VdpaBlkOptions o, string name, int _) : base(name, new VdpaBlockDevice(name, o.CapacityBytes), o)
    {
        if (o.MaxRequestBytes < VirtioBlk.SectorSize || o.MaxRequestBytes % VirtioBlk.SectorSize != 0)
            throw new ArgumentOutOfRangeException(nameof(o.MaxRequestBytes), o.MaxRequestBytes, "requests are whole 512-byte sectors");
        if (o.MaxRequestBytes > VdpaBlockDevice.SizeMax * VdpaBlockDevice.SegMax)
            throw new ArgumentOutOfRangeException(nameof(o.MaxRequestBytes), o.MaxRequestBytes, $"the device takes at most {VdpaBlockDevice.SizeMax * VdpaBlockDevice.SegMax} bytes per request");
        if (o.Depth < 1 || o.Depth > o.QueueSize / (o.Indirect ? 1 : 3))
            throw new ArgumentOutOfRangeException(nameof(o.Depth), o.Depth, $"depth must be 1 to {o.QueueSize / (o.Indirect ? 1 : 3)} (3 descriptors per request in a ring of {o.QueueSize})");
        blk = o;
    }

    public VdpaBlockDevice BlockDevice => (VdpaBlockDevice)Device;
    /// <summary>Capacity in 512-byte sectors, from the config space.</summary>
    public ulong CapacitySectors { get; private set; }
    public uint BlockSize { get; private set; }

    protected override long BufferBytes(int queueSize) => (long)blk.Depth * (blk.MaxRequestBytes + 4096) + 3 * 4096;

    protected override ulong WantedDeviceFeatures => VirtioConfig.Bit(VirtioBlk.F_BLK_SIZE) | VirtioConfig.Bit(VirtioBlk.F_FLUSH) |
        VirtioConfig.Bit(VirtioBlk.F_SIZE_MAX) | VirtioConfig.Bit(VirtioBlk.F_SEG_MAX);

    protected override void Started()
    {
        CapacitySectors = BinaryPrimitives.ReadUInt64LittleEndian(Vhost.GetConfig(VirtioBlk.ConfigCapacity, 8));
        BlockSize = BinaryPrimitives.ReadUInt32LittleEndian(Vhost.GetConfig(VirtioBlk.ConfigBlkSize, 4));
        hdrBase = Allocate((long)blk.Depth * VirtioBlk.OutHdrSize);
        statusBase = Allocate((long)blk.Depth * StatusBytes);
        dataBase = Allocate((long)blk.Depth * blk.MaxRequestBytes);
        for (int i = blk.Depth - 1; i >= 0; i--) free.Push(i);
        Queues[0].DisableInterrupts();
    }

    ulong Hdr(int s) => hdrBase + (ulong)(s * VirtioBlk.OutHdrSize);
    ulong Data(int s) => dataBase + (ulong)((long)s * blk.MaxRequestBytes);
    ulong StatusAddr(int s) => statusBase + (ulong)(s * StatusBytes);

    /// <summary>Builds request <paramref name="slot"/> in guest memory and adds it to the ring (not yet published).</summary>
    void Submit(int slot, uint type, ulong sector, int length)
    {
        var mem = TheVm.Memory;
        var h = mem.Span(Hdr(slot), VirtioBlk.OutHdrSize);
        BinaryPrimitives.WriteUInt32LittleEndian(h, type);
        BinaryPrimitives.WriteUInt32LittleEndian(h[4..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(h[8..], sector);
        mem.Write(StatusAddr(slot), (byte)0xff);
        var hdr = new VirtqBuffer(Hdr(slot), VirtioBlk.OutHdrSize);
        var data = new VirtqBuffer(Data(slot), (uint)length);
        var status = new VirtqBuffer(StatusAddr(slot), 1);
        if (type == VirtioBlk.T_OUT) Queues[0].Add([hdr, data], [status], (ulong)slot);
        else if (length > 0) Queues[0].Add([hdr], [data, status], (ulong)slot);
        else Queues[0].Add([hdr], [status], (ulong)slot);
    }

    /// <summary>Waits for one completion; returns its slot after checking the status byte.</summary>
    int Complete(out uint written)
    {
        var q = Queues[0];
        while (true)
        {
            if (q.TryGetUsed(out var u))
            {
                written = u.Length;
                return (int)u.Token;
            }
            ThrowIfBroken();
            if (q.EnableInterrupts()) { q.DisableInterrupts(); continue; }
            if (!WaitForCall(0, TimeSpan.FromSeconds(5)))
                throw NoCall(0, "no completion");
            Calls[0].Read();
            q.DisableInterrupts();
        }
    }

    byte StatusOf(int slot) => TheVm.Memory.Read<byte>(StatusAddr(slot));

    void Check(int slot, string what)
    {
        var st = StatusOf(slot);
        if (st != VirtioBlk.S_OK)
            throw new VirtioBlkException(st, $"{Name}: {what} failed with status {st switch { 1 => "IOERR", 2 => "UNSUPP", _ => st.ToString() }}");
    }

    int Run(uint type, ulong sector, int length, string what)
    {
        ThrowIfBroken();
        if (length < 0 || length > blk.MaxRequestBytes)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"one request carries 0 to {blk.MaxRequestBytes} bytes (MaxRequestBytes)");
        int slot = free.Pop();
        try
        {
            Submit(slot, type, sector, length);
            Queues[0].KickIfNeeded();
            int done = Complete(out var written);
            if (done != slot) throw new InvalidOperationException($"{Name}: completion for slot {done}, expected {slot}");
            Check(slot, what);
            return (int)written;
        }
        finally
        {
            free.Push(slot);
        }
    }

    /// <summary>Writes <paramref name="data"/> (whole sectors) at <paramref name="sector"/>.</summary>
    public void Write(ulong sector, ReadOnlySpan<byte> data)
    {
        if (data.Length % VirtioBlk.SectorSize != 0) throw new ArgumentException($"{data.Length} bytes is not whole 512-byte sectors", nameof(data));
        for (int off = 0; off < data.Length; off += blk.MaxRequestBytes)
        {
            int n = Math.Min(blk.MaxRequestBytes, data.Length - off);
            int slot = free.Peek();
            TheVm.Memory.Write(Data(slot), data.Slice(off, n));
            Run(VirtioBlk.T_OUT, sector + (ulong)(off / VirtioBlk.SectorSize), n, $"OUT sector {sector} + {off / 512}");
        }
    }

    /// <summary>Reads <paramref name="length"/> bytes (whole sectors) from <paramref name="sector"/>.</summary>
    public byte[] Read(ulong sector, int length)
    {
        if (length % VirtioBlk.SectorSize != 0) throw new ArgumentException($"{length} bytes is not whole 512-byte sectors", nameof(length));
        var result = new byte[length];
        for (int off = 0; off < length; off += blk.MaxRequestBytes)
        {
            int n = Math.Min(blk.MaxRequestBytes, length - off);
            int slot = free.Peek();
            Run(VirtioBlk.T_IN, sector + (ulong)(off / VirtioBlk.SectorSize), n, $"IN sector {sector} + {off / 512}");
            TheVm.Memory.Read(Data(slot), result.AsSpan(off, n));
        }
        return result;
    }

    public void Flush() => Run(VirtioBlk.T_FLUSH, 0, 0, "FLUSH");

    /// <summary>The device's serial (VIRTIO_BLK_T_GET_ID, up to 20 bytes, NUL-padded).</summary>
    public string GetId()
    {
        int slot = free.Peek();
        int written = Run(VirtioBlk.T_GET_ID, 0, VirtioBlk.IdBytes, "GET_ID");
        var id = new byte[Math.Max(0, written - 1)];
        TheVm.Memory.Read(Data(slot), id);
        return System.Text.Encoding.ASCII.GetString(id).TrimEnd('\0');
    }

    /// <summary>
    /// Throughput: <paramref name="totalBytes"/> in requests of <paramref name="requestBytes"/>, sequential from sector 0
    /// (wrapping at the disk's end), keeping <see cref="VdpaBlkOptions.Depth"/> requests in flight. Data is not touched
    /// by the driver: this measures the device path (IOTLB translation, copy, completion, notification).
    /// </summary>
    public BlockResult Benchmark(bool write, int requestBytes, long totalBytes, CancellationToken cancellation = default)
    {
        ThrowIfBroken();
        if (requestBytes < 512 || requestBytes % 512 != 0 || requestBytes > blk.MaxRequestBytes)
            throw new ArgumentOutOfRangeException(nameof(requestBytes), requestBytes, $"whole sectors up to {blk.MaxRequestBytes} bytes");
        long requests = Math.Max(1, totalBytes / requestBytes);
        ulong perRequest = (ulong)requestBytes / 512, sector = 0;
        var (k0, i0, _, _) = Notifications;
        long submitted = 0, completed = 0;
        var q = Queues[0];
        var sw = Stopwatch.StartNew();
        while (completed < requests)
        {
            cancellation.ThrowIfCancellationRequested();
            while (submitted < requests && free.TryPop(out int slot))
            {
                if (sector + perRequest > CapacitySectors) sector = 0;
                Submit(slot, write ? VirtioBlk.T_OUT : VirtioBlk.T_IN, sector, requestBytes);
                sector += perRequest;
                submitted++;
            }
            q.KickIfNeeded();
            int done = Complete(out _);
            Check(done, write ? "OUT" : "IN");
            free.Push(done);
            completed++;
            while (q.TryGetUsed(out var u))
            {
                Check((int)u.Token, write ? "OUT" : "IN");
                free.Push((int)u.Token);
                completed++;
            }
        }
        sw.Stop();
        var (k1, i1, _, _) = Notifications;
        return new BlockResult(write ? "write" : "read", requestBytes, requests, requests * requestBytes, sw.Elapsed, k1 - k0, i1 - i0);
    }

    public override IRenderable ToRenderable()
    {
        var grid = new Grid().AddColumn();
        var d = BlockDevice;
        grid.AddRow(new Markup(Markup.Escape($"capacity {CapacitySectors:N0} sectors ({CapacitySectors * 512 >> 20} MiB), blk_size {BlockSize}; device: {d.Reads:N0} reads, {d.Writes:N0} writes, {d.Flushes:N0} flushes, {d.IoErrors:N0} I/O errors")));
        grid.AddRow(base.ToRenderable());
        return grid;
    }
}
