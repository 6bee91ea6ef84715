using System.Diagnostics;
using System.Runtime.InteropServices;
using VirtLab.Plugins.Vfio.Tracking;
using VirtLab.Plugins.Vfio.Type1;
using VirtLab.Sdk.Machine;

namespace VirtLab.Plugins.Vfio.Devices;

/// <summary>Where a device's DMA writes go next.</summary>
public enum DmaPatternKind
{
    /// <summary>Page after page through the region, wrapping.</summary>
    Sequential,
    /// <summary>Uniformly random pages of the region (seeded).</summary>
    Random,
    /// <summary>Every <see cref="DmaTraffic.Stride"/> bytes, wrapping.</summary>
    Stride,
}

/// <summary>
/// A device's DMA traffic: writes of <see cref="WriteBytes"/> into the IOVA region [<see cref="Iova"/>, +<see cref="Length"/>)
/// in a <see cref="Pattern"/>. Each write carries a fresh 64-bit sequence number in every word, so a copy that missed
/// it is visible byte for byte.
/// </summary>
public sealed record DmaTraffic(ulong Iova, ulong Length)
{
    public DmaPatternKind Pattern { get; init; } = DmaPatternKind.Random;
    public int WriteBytes { get; init; } = 4096;
    public ulong Stride { get; init; } = 2 << 20;
    public int Seed { get; init; } = 1;

    internal void Validate()
    {
        if (Length == 0) throw new ArgumentException("DMA traffic needs a region: Length is 0");
        if (WriteBytes <= 0 || WriteBytes % 8 != 0 || (ulong)WriteBytes > Length)
            throw new ArgumentException($"WriteBytes {WriteBytes} must be a positive multiple of 8 no larger than the region ({Length} bytes)");
        if (Pattern == DmaPatternKind.Stride && (Stride == 0 || Stride % 8 != 0))
            throw new ArgumentException($"Stride {Stride} must be a positive multiple of 8");
    }
}

/// <summary>
/// A device that DMA-writes into the VM's guest memory through its container's IOVA space, on the caller's thread
/// (<see cref="Write"/>, <see cref="Burst"/>) or on its own thread at a set rate (<see cref="Start"/>) while vCPUs run.
/// </summary>
public abstract class DmaDevice : VmDevice, IVfioDevice
{
    readonly object runLock = new();
    Thread? thread;
    CancellationTokenSource? cts;
    ulong seq;
    long writes, bytes, faults;
    DmaTraffic? traffic;
    Random? rng;
    ulong cursor;
    Exception? threadError;

    protected DmaDevice(string name, VfioContainer container, VfioGroup group) : base(name)
    {
        Container = container;
        Group = group;
    }

    public VfioContainer Container { get; }
    public VfioGroup Group { get; }

    /// <summary>DMA writes done, bytes written, writes that faulted (unmapped IOVA, no permission, pin refused).</summary>
    public long Writes => Interlocked.Read(ref writes);
    public long BytesWritten => Interlocked.Read(ref bytes);
    public long Faults => Interlocked.Read(ref faults);

    /// <summary>The last write that faulted, in words.</summary>
    public string? LastFault { get; private set; }

    public bool Running => thread is { IsAlive: true };

    protected override void OnAttach(Vm vm)
    {
        if (Container.Vm != vm) throw new ArgumentException($"{Name}: its container belongs to another VM (or none); devices DMA into their container's VM");
        if (Group.Container != Container) Container.AddGroup(Group);
        Container.RegisterDevice(this);
    }

    /// <summary>One DMA write of <paramref name="data"/> at <paramref name="iova"/>; false (counted) when it faults.</summary>
    public bool Write(ulong iova, ReadOnlySpan<byte> data)
    {
        if (!IsAttached) throw new InvalidOperationException($"{Name} is not attached: vm.Attach(device) first");
        var ok = DoWrite(iova, data, out var why);
        if (ok)
        {
            Interlocked.Increment(ref writes);
            Interlocked.Add(ref bytes, data.Length);
        }
        else
        {
            Interlocked.Increment(ref faults);
            LastFault = why;
        }
        return ok;
    }

    protected abstract bool DoWrite(ulong iova, ReadOnlySpan<byte> data, out string? why);

    /// <summary><paramref name="count"/> writes of <paramref name="traffic"/> on this thread; returns how many succeeded.</summary>
    public int Burst(DmaTraffic traffic, int count)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        SetTraffic(traffic);
        var buf = new byte[traffic.WriteBytes];
        var ok = 0;
        for (var i = 0; i < count; i++) if (WriteNext(buf)) ok++;
        return ok;
    }

    void SetTraffic(DmaTraffic t)
    {
        ArgumentNullException.ThrowIfNull(t);
        t.Validate();
        if (!ReferenceEquals(traffic, t)) { traffic = t; rng = new Random(t.Seed); cursor = 0; }
    }

    bool WriteNext(byte[] buf)
    {
        var t = traffic!;
        var slots = (t.Length - (ulong)t.WriteBytes) / (ulong)t.WriteBytes + 1;
        ulong off;
        switch (t.Pattern)
        {
            case DmaPatternKind.Sequential: off = cursor % slots * (ulong)t.WriteBytes; cursor++; break;
            case DmaPatternKind.Stride: off = cursor * t.Stride % (t.Length - (ulong)t.WriteBytes + 1) & ~7UL; cursor++; break;
            default: off = (ulong)rng!.NextInt64((long)Math.Min(slots, long.MaxValue)) * (ulong)t.WriteBytes; break;
        }
        MemoryMarshal.Cast<byte, ulong>(buf.AsSpan()).Fill(Interlocked.Increment(ref seq));
        return Write(t.Iova + off, buf);
    }

    /// <summary>
    /// Starts writing <paramref name="traffic"/> on the device's own thread at <paramref name="writesPerSecond"/>
    /// (0 = as fast as it goes) until <see cref="Stop"/>.
    /// </summary>
    public void Start(DmaTraffic traffic, double writesPerSecond = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(writesPerSecond);
        lock (runLock)
        {
            if (Running) throw new InvalidOperationException($"{Name} is already running; Stop() first");
            SetTraffic(traffic);
            threadError = null;
            cts = new CancellationTokenSource();
            var ct = cts.Token;
            thread = new Thread(() => Loop(writesPerSecond, ct)) { IsBackground = true, Name = Name + " DMA" };
            thread.Start();
        }
    }

    void Loop(double rate, CancellationToken ct)
    {
        try
        {
            var buf = new byte[traffic!.WriteBytes];
            var sw = Stopwatch.StartNew();
            long n = 0;
            while (!ct.IsCancellationRequested)
            {
                WriteNext(buf);
                n++;
                if (rate > 0)
                {
                    var due = n / rate;
                    var ahead = due - sw.Elapsed.TotalSeconds;
                    if (ahead > 0.002) ct.WaitHandle.WaitOne(TimeSpan.FromSeconds(ahead));
                }
            }
        }
        catch (Exception e) { threadError = e; }
    }

    /// <summary>Stops the DMA thread and waits for its last write to finish (a device quiesced for stop-and-copy).</summary>
    public void Stop()
    {
        lock (runLock)
        {
            cts?.Cancel();
            thread?.Join();
            thread = null;
            cts?.Dispose();
            cts = null;
            if (threadError is { } e) throw new InvalidOperationException($"{Name}'s DMA thread failed: {e.Message}", e);
        }
    }

    /// <summary>dma_unmap notification: the device must drop its pins in the range.</summary>
    public virtual void DmaUnmap(ulong iova, ulong size) { }

    protected override void Dispose(bool disposing)
    {
        try { Stop(); } catch (InvalidOperationException) { }
        Container.UnregisterDevice(this);
    }

    public override string Summary => $"{Writes} DMA writes, {BytesWritten} bytes, {Faults} faults{(Running ? ", running" : "")}";
}

/// <summary>
/// A mediated device (mdev, emulated IOMMU group): before writing a page it pins it (vfio_pin_pages: the page becomes
/// dirty in type1's bitmap), then writes through the IOVA space; with <see cref="KeepPinned"/> the page stays pinned
/// (and reported dirty every round) until the container asks for it back. With <see cref="UseDmaRw"/> it copies
/// with vfio_dma_rw instead, which marks exactly the pages written.
/// </summary>
public sealed class MediatedDevice : DmaDevice
{
    readonly Dictionary<ulong, int> held = [];   // pages this device keeps pinned

    public MediatedDevice(VfioContainer container, string name = "mdev0", VfioGroup? group = null)
        : base(name, container, group ?? VfioGroup.Emulated(name)) { }

    /// <summary>Keep written pages pinned (a device that keeps working buffers) instead of unpinning after each write.</summary>
    public bool KeepPinned { get; set; }

    /// <summary>Write with vfio_dma_rw (the kernel copies and marks dirty) instead of pin + write.</summary>
    public bool UseDmaRw { get; set; }

    public int PinnedPages { get { lock (held) return held.Count; } }

    protected override bool DoWrite(ulong iova, ReadOnlySpan<byte> data, out string? why)
    {
        if (data.Length == 0) { why = null; return true; }
        if (UseDmaRw)
        {
            var copy = data.ToArray();
            var r = Container.DmaRwCore(iova, copy, write: true);
            why = r.Why;
            return !r.Failed;
        }
        var first = iova & ~4095UL;
        var npage = (int)(((iova + (ulong)data.Length - 1) >> 12) - (iova >> 12) + 1);
        var gpas = new ulong[npage];
        var pr = Container.PinCore(this, first, npage, DmaProt.Write, gpas);
        if (pr.Failed) { why = pr.Why; return false; }
        var ok = Container.Iova!.TryWrite(iova, data, out var fault);
        why = ok ? null : fault.ToString();
        if (ok) Container.ObserveDeviceWrite(iova, (ulong)data.Length, DmaPath.PinnedPage);
        if (KeepPinned)
        {
            lock (held) for (var i = 0; i < npage; i++) held[first + 4096UL * (ulong)i] = held.GetValueOrDefault(first + 4096UL * (ulong)i) + 1;
        }
        else Container.UnpinPages(this, first, npage);
        return ok;
    }

    /// <summary>Unpins every page this device holds.</summary>
    public void UnpinAll() => DmaUnmap(0, ulong.MaxValue);

    public override void DmaUnmap(ulong iova, ulong size)
    {
        List<(ulong, int)> drop;
        lock (held)
        {
            drop = held.Where(kv => kv.Key >= iova && kv.Key - iova < size).Select(kv => (kv.Key, kv.Value)).ToList();
            foreach (var (p, _) in drop) held.Remove(p);
        }
        foreach (var (p, refs) in drop)
            for (var i = 0; i < refs; i++) Container.UnpinPages(this, p, 1);
    }

    public override string Summary => base.Summary + (PinnedPages > 0 ? $", {PinnedPages} pages pinned" : "");
}

/// <summary>
/// An assigned device behind the IOMMU (passthrough group): its DMA goes through the IOVA space straight into guest
/// memory; type1 never sees it (so it reports every mapped page dirty), IOMMU dirty bits and the device's own DMA log do.
/// </summary>
public sealed class PassthroughDevice : DmaDevice
{
    public PassthroughDevice(VfioContainer container, string name = "pci0", VfioGroup? group = null)
        : base(name, container, group ?? VfioGroup.Passthrough(name)) { }

    protected override bool DoWrite(ulong iova, ReadOnlySpan<byte> data, out string? why)
    {
        var space = Container.Iova!;
        var ok = space.TryWrite(iova, data, out var fault);
        why = ok ? null : fault.ToString();
        if (ok) Container.ObserveDeviceWrite(iova, (ulong)data.Length, DmaPath.Iommu);
        return ok;
    }
}
