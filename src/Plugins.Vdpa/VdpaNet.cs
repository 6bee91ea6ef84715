using System.Buffers.Binary;
using System.Diagnostics;
using System.Numerics;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk;
using VirtLab.Sdk.Virtio;

namespace VirtLab.Plugins.Vdpa;

/// <summary>Options of a virtio-net driver over vhost-vdpa.</summary>
public sealed record VdpaNetOptions : VdpaOptions
{
    public byte[]? Mac { get; init; }
    public ushort Mtu { get; init; } = 1500;
    /// <summary>
    /// TX completions by interrupt (virtio-net's napi_tx=1, Linux's default): at the end of each burst the driver asks
    /// for an interrupt once 3/4 of the frames in flight are done (virtqueue_enable_cb_delayed: used_event that far
    /// ahead with EVENT_IDX; without it NO_INTERRUPT is just cleared), and its TX poll re-arms for the next completion
    /// (enable_cb_prepare). False (napi_tx=0): TX interrupts stay off and completions are reaped on transmit.
    /// </summary>
    public bool TxInterrupts { get; init; }
}

/// <summary>
/// One loopback measurement: packets, wall time, the process's CPU time over the run (driver and device threads: on a
/// shared host the per-CPU-second rate is the one other load does not dilute), and the notifications it took.
/// </summary>
public sealed record LoopbackResult(int FrameBytes, int Batch, bool EventIdx, long Packets, TimeSpan Elapsed,
    long Kicks, long Interrupts, long KicksSuppressed, long InterruptsSuppressed, TimeSpan Cpu = default, bool TxInterrupts = false,
    long DriverSleeps = 0, long DeviceWakeups = 0, long RxNoBuffer = 0, long TxStops = 0) : IDisplayable
{
    public double PacketsPerSecond => Packets / Elapsed.TotalSeconds;
    /// <summary>Packets per second of process CPU time (driver + device), or NaN when not measured.</summary>
    public double PacketsPerCpuSecond => Cpu > TimeSpan.Zero ? Packets / Cpu.TotalSeconds : double.NaN;
    public double NotificationsPerPacket => (double)(Kicks + Interrupts) / Math.Max(1, Packets);

    public IRenderable ToRenderable() => Table([this]);

    /// <summary>Several results as one table.</summary>
    public static IRenderable Table(IEnumerable<LoopbackResult> results)
    {
        var t = new Table().AddColumn("frame").AddColumn("batch").AddColumn("EVENT_IDX").AddColumn("napi_tx").AddColumn("packets").AddColumn("Mpps")
            .AddColumn("Mpps/CPU-s").AddColumn("kicks/pkt").AddColumn("interrupts/pkt").AddColumn("notif./pkt")
            .AddColumn("drv sleeps/pkt").AddColumn("dev wakes/pkt").AddColumn("rx-nobuf/pkt").AddColumn("tx stops/pkt");
        foreach (var r in results)
            t.AddRow($"{r.FrameBytes} B", r.Batch.ToString(), r.EventIdx ? "on" : "off", r.TxInterrupts ? "on" : "off", r.Packets.ToString("N0"), (r.PacketsPerSecond / 1e6).ToString("F3"),
                (r.PacketsPerCpuSecond / 1e6).ToString("F3"),
                ((double)r.Kicks / r.Packets).ToString("F4"), ((double)r.Interrupts / r.Packets).ToString("F4"), r.NotificationsPerPacket.ToString("F4"),
                ((double)r.DriverSleeps / r.Packets).ToString("F4"), ((double)r.DeviceWakeups / r.Packets).ToString("F4"),
                ((double)r.RxNoBuffer / r.Packets).ToString("F4"), ((double)r.TxStops / r.Packets).ToString("F4"));
        return t;
    }
}

/// <summary>
/// A virtio-net driver over vhost-vdpa on a vdpa_sim-like loopback device: RX is queue 0, TX queue 1; every frame
/// sent comes back on the receive queue. Frames carry a 12-byte virtio_net_hdr_v1 in front, as VERSION_1 requires.
/// <c>var nic = vm.Attach(Vdpa.Net()); nic.Send(frame); nic.Receive();</c>
/// </summary>
public sealed class VdpaNet : VdpaDriver
{
    const int Rx = VdpaNetDevice.RxQueue, Tx = VdpaNetDevice.TxQueue;
    readonly int bufferBytes;
    // Buffers lie an odd number of cache lines apart: at a power-of-two stride every frame's first lines would fall
    // in the same few cache sets (2 of the 64 L1 sets at 2 KiB) and evict each other.
    readonly int stride;
    ulong rxBase, txBase;
    readonly Stack<int> freeTx = new();
    long sent, received;
    byte[] scratch = [];

    public VdpaNet(VdpaNetOptions? options = null, string name = "vdpa-net")
        : this(options ?? new VdpaNetOptions(), name, 0) { }

    VdpaNet(VdpaNetOptions o, string name, int _) : base(name, new VdpaNetDevice(name, o.Mac, o.Mtu), o)
    {
        // header + MTU + Ethernet header, rounded to a power of two (2 KiB for a 1500-byte MTU).
        bufferBytes = (int)BitOperations.RoundUpToPowerOf2((uint)(VirtioNet.HdrV1Size + o.Mtu + 14));
        stride = bufferBytes + 64;
        NetOptions = o;
    }

    public VdpaNetOptions NetOptions { get; }
    public VdpaNetDevice NetDevice => (VdpaNetDevice)Device;
    /// <summary>The largest frame (Ethernet header + payload) one buffer carries.</summary>
    public int MaxFrame => bufferBytes - VirtioNet.HdrV1Size;
    /// <summary>The MAC address read from the device's config space.</summary>
    public byte[] Mac { get; private set; } = [];
    public ushort Mtu { get; private set; }
    public long Sent => sent;
    public long Received => received;

    protected override long BufferBytes(int queueSize) => 2L * queueSize * (bufferBytes + 64) + 2 * 4096;

    protected override ulong WantedDeviceFeatures =>
        VirtioConfig.Bit(VirtioNet.F_MAC) | VirtioConfig.Bit(VirtioNet.F_MTU) | VirtioConfig.Bit(VirtioNet.F_STATUS);

    protected override void Started()
    {
        Mac = Vhost.GetConfig(VirtioNet.ConfigMac, 6);
        Mtu = BinaryPrimitives.ReadUInt16LittleEndian(Vhost.GetConfig(VirtioNet.ConfigMtu, 2));
        rxBase = Allocate((long)QueueSize * stride);
        txBase = Allocate((long)QueueSize * stride);
        for (int i = QueueSize - 1; i >= 0; i--) freeTx.Push(i);
        // Fill the receive ring, as virtio-net does at open; TX interrupts off (napi_tx asks for them per burst).
        for (int i = 0; i < QueueSize; i++) PostRx(i);
        Queues[Rx].KickIfNeeded();
        Queues[Tx].DisableInterrupts();
    }

    void PostRx(int slot)
    {
        // One device-writable buffer: the SDK's one-descriptor path, no spans to build.
        if (!Queues[Rx].TryAdd(new VirtqBuffer(rxBase + (ulong)(slot * stride), (uint)bufferBytes), true, (ulong)slot, out _))
            throw new InvalidOperationException($"{Name}: no free descriptor for receive buffer {slot}");
    }

    void ReapTx()
    {
        while (Queues[Tx].TryGetUsed(out var u)) freeTx.Push((int)u.Token);
    }

    /// <summary>Queues one frame (Ethernet header + payload) for transmission and kicks if the device wants it.
    /// False when all transmit buffers are in flight.</summary>
    public bool Send(ReadOnlySpan<byte> frame, bool kick = true)
    {
        ThrowIfBroken();
        if (frame.Length > MaxFrame)
            throw new ArgumentException($"a {frame.Length}-byte frame does not fit a {bufferBytes}-byte buffer with its {VirtioNet.HdrV1Size}-byte header (at most {MaxFrame})", nameof(frame));
        ReapTx();
        if (!freeTx.TryPop(out int slot)) return false;
        ulong gpa = txBase + (ulong)(slot * stride);
        var mem = TheVm.Memory;
        var buf = mem.Span(gpa, VirtioNet.HdrV1Size + frame.Length);
        buf[..VirtioNet.HdrV1Size].Clear();
        frame.CopyTo(buf[VirtioNet.HdrV1Size..]);
        if (!Queues[Tx].TryAdd(new VirtqBuffer(gpa, (uint)(VirtioNet.HdrV1Size + frame.Length)), false, (ulong)slot, out _))
        {
            freeTx.Push(slot);
            return false;
        }
        sent++;
        if (kick) Queues[Tx].KickIfNeeded();
        return true;
    }

    /// <summary>Sends a frame of <paramref name="payload"/> to this NIC's own MAC (ethertype 0x88b5, local experimental).</summary>
    public bool Send(string payload) => Send(Frame(System.Text.Encoding.UTF8.GetBytes(payload)));

    /// <summary>An Ethernet frame to and from this NIC's MAC carrying <paramref name="payload"/>.</summary>
    public byte[] Frame(ReadOnlySpan<byte> payload)
    {
        var f = new byte[14 + payload.Length];
        Mac.CopyTo(f, 0);
        Mac.CopyTo(f, 6);
        f[12] = 0x88; f[13] = 0xb5;
        payload.CopyTo(f.AsSpan(14));
        return f;
    }

    /// <summary>The next received frame (without the virtio-net header), or null when none arrives within the timeout (default 1 s).</summary>
    public byte[]? Receive(TimeSpan? timeout = null)
    {
        var deadline = Stopwatch.GetTimestamp() + Stopwatch.Frequency * (long)(timeout ?? TimeSpan.FromSeconds(1)).TotalMilliseconds / 1000;
        while (true)
        {
            if (TryReceive(out var frame)) return frame;
            ThrowIfBroken();
            if (Queues[Rx].EnableInterrupts()) continue;          // arrived meanwhile
            long left = (deadline - Stopwatch.GetTimestamp()) * 1000 / Stopwatch.Frequency;
            if (left <= 0) return null;
            // Lock-step: nothing else runs the device, so no answer now means none later.
            if (!WaitForCall(Rx, TimeSpan.FromMilliseconds(left)) && Options.LockStep) return null;
            Calls[Rx].TryRead(out _);
            Queues[Rx].DisableInterrupts();
        }
    }

    bool TryReceive(out byte[] frame)
    {
        frame = [];
        if (!Queues[Rx].TryGetUsed(out var u)) return false;
        int slot = (int)u.Token;
        int len = (int)Math.Max(0, (long)u.Length - VirtioNet.HdrV1Size);
        frame = TheVm.Memory.Span(rxBase + (ulong)(slot * stride) + VirtioNet.HdrV1Size, len).ToArray();
        PostRx(slot);
        Queues[Rx].KickIfNeeded();
        received++;
        return true;
    }

    /// <summary>Used buffers the receive path takes per poll (NAPI's budget, virtio-net's napi_weight).</summary>
    public const int NapiBudget = 64;

    /// <summary>Free entries at which a stopped transmit queue restarts (virtio-net: 2 + MAX_SKB_FRAGS).</summary>
    public const int TxWakeThreshold = 2 + 17;

    /// <summary>Frames in flight at which the transmit queue stops (check_sq_full_and_disable: fewer than
    /// <see cref="TxWakeThreshold"/> descriptors free, one descriptor per frame): 238 of a 256-entry ring.</summary>
    public int TxStopInFlight => QueueSize - TxWakeThreshold + 1;

    /// <summary>
    /// Loops <paramref name="packets"/> frames of <paramref name="frameBytes"/> through the device, as Linux's virtio-net
    /// does on one CPU. Transmit (start_xmit with xmit_more): <paramref name="batch"/> frames, then one kick decision,
    /// while the window — the receive buffers — has room for the whole batch (or the last frames); TX completions are
    /// reaped there, TX interrupts stay off (napi_tx=0). Receive (NAPI): up to <see cref="NapiBudget"/> used buffers per
    /// poll, re-posted at once with one kick decision; while there is work the driver polls with interrupts off, and
    /// only when it can neither send nor receive it re-arms the RX interrupt for the next used buffer
    /// (virtqueue_enable_cb_prepare: used_event = last used with EVENT_IDX, else NO_INTERRUPT cleared) and sleeps on the
    /// call eventfd; the interrupt handler turns them off again (virtqueue_disable_cb). Both modes run the same code;
    /// only the ring fields the SDK writes differ. With <paramref name="verify"/> every frame carries its sequence
    /// number and a pattern, checked on receipt (order and content). Counts notifications over the run.
    /// </summary>
    // Full optimisation at the first call: the loop runs for the whole call, so the ReadyToRun code (no inlining of the
    // SDK's ring methods, a call thunk per SDK call) would otherwise run the first ~30 measurements from start to end.
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
    public LoopbackResult Loopback(long packets, int frameBytes = 64, int batch = 32, bool verify = false, CancellationToken cancellation = default)
    {
        ThrowIfBroken();
        if (frameBytes < 14 + 8 || frameBytes > MaxFrame)
            throw new ArgumentOutOfRangeException(nameof(frameBytes), frameBytes, $"a frame is 22 to {MaxFrame} bytes here (Ethernet header + 8-byte sequence number)");
        if (batch < 1 || batch > QueueSize)
            throw new ArgumentOutOfRangeException(nameof(batch), batch, $"batch must be 1 to the queue size {QueueSize}");
        if (packets < 1) throw new ArgumentOutOfRangeException(nameof(packets), packets, "at least one packet");
        // Drain what is pending from earlier use.
        while (TryReceive(out _)) { }
        var (k0, i0, ks0, is0) = Notifications;
        var rx = Queues[Rx];
        var tx = Queues[Tx];
        // The driver's own buffers, addressed directly: it owns the memslot for as long as it is attached (no lookup
        // and teardown guard per frame).
        var txArea = TheVm.Memory.Span(txBase, QueueSize * stride);
        var rxArea = TheVm.Memory.Span(rxBase, QueueSize * stride);
        rx.DisableInterrupts();
        if (scratch.Length < frameBytes) scratch = new byte[frameBytes];
        var frame = scratch.AsSpan(0, frameBytes);
        frame.Clear();
        Mac.CopyTo(frame);
        Mac.CopyTo(frame[6..]);
        frame[12] = 0x88; frame[13] = 0xb5;
        for (int i = 22; i < frameBytes; i++) frame[i] = (byte)i;
        int bytes = VirtioNet.HdrV1Size + frameBytes;
        // Every frame of the run is the same but for its sequence number: the header and frame are written into each
        // transmit buffer at its first use, and per packet only the 8-byte sequence number (a stack that rebuilt the frame
        // per packet would copy 76 bytes more: a third of the driver's per-packet work at 64 B).
        // A buffer still in flight from an earlier Send is written when it comes back and is first used here.
        var filled = new bool[QueueSize];
        const int SeqOffset = VirtioNet.HdrV1Size + 14;
        Span<UsedBuffer> used = stackalloc UsedBuffer[Math.Min(NapiBudget, QueueSize)];
        long nextSend = 0, nextRecv = 0, sleeps = 0, stops = 0;
        long wake0 = Interlocked.Read(ref Device.Counters.WorkerWakeups), noBuf0 = Interlocked.Read(ref Device.Counters.RxNoBuffer);
        bool napiTx = NetOptions.TxInterrupts, txStopped = false;
        // The queue starts awake: a TX signal left from an earlier run (its last stop's interrupt, raised after the last
        // frame came back) was that run's to take. Left unread, it would make every poll(2) of this run return at once.
        Calls[Tx].TryRead(out _);
        long txIrqsTaken = Calls[Tx].Sent;
        var cpu0 = Environment.CpuUsage.TotalTime;
        var sw = Stopwatch.StartNew();
        while (nextRecv < packets)
        {
            cancellation.ThrowIfCancellationRequested();
            // napi_tx=0: a TX interrupt is taken when it is raised, not when the driver next idles (a hard interrupt
            // preempts the NAPI work): skb_xmit_done turns TX callbacks off and wakes the queue. Its eventfd is read only
            // when the device signalled it (a load of the signal count; no read(2) per iteration).
            if (!napiTx && Calls[Tx].Sent != txIrqsTaken)
            {
                txIrqsTaken = Calls[Tx].Sent;
                Calls[Tx].TryRead(out _);
                tx.DisableInterrupts();
                txStopped = false;
            }
            // napi_tx=0: a stopped queue gets no start_xmit, so nothing reaps its completions until skb_xmit_done wakes
            // it. napi_tx=1: the RX poll reaps TX too (virtnet_poll_cleantx) and wakes the queue at 2 + MAX_SKB_FRAGS free.
            if (napiTx)
            {
                ReapTx();
                if (txStopped && tx.FreeDescriptors >= TxWakeThreshold) txStopped = false;
            }
            else if (!txStopped) ReapTx();
            long room = Math.Min(Math.Min(QueueSize - (nextSend - nextRecv), freeTx.Count), packets - nextSend);
            // The stack's queue restarts once the ring has room for a burst, at most TxWakeThreshold entries (virtio-net
            // wakes its stopped queue at 2 + MAX_SKB_FRAGS free), and sends what fits: up to batch frames per kick.
            bool transmitted = !txStopped && (room >= Math.Min(batch, TxWakeThreshold) || (room > 0 && nextSend + room == packets));
            if (transmitted)
            {
                if (napiTx) tx.DisableInterrupts();                 // start_xmit: virtqueue_disable_cb, free_old_xmit
                int add = (int)Math.Min(batch, room);
                for (int i = 0; i < add && freeTx.TryPop(out int slot); i++)
                {
                    if (!filled[slot])
                    {
                        var buf = txArea.Slice(slot * stride, bytes);
                        buf[..VirtioNet.HdrV1Size].Clear();
                        frame.CopyTo(buf[VirtioNet.HdrV1Size..]);
                        filled[slot] = true;
                    }
                    BinaryPrimitives.WriteInt64LittleEndian(txArea.Slice(slot * stride + SeqOffset, 8), nextSend);
                    if (!tx.TryAdd(new VirtqBuffer(txBase + (ulong)(slot * stride), (uint)bytes), false, (ulong)slot, out _))
                        throw new InvalidOperationException($"{Name}: no free transmit descriptor with {tx.InFlight} in flight");
                    nextSend++;
                    // check_sq_full_and_disable: fewer than 2 + MAX_SKB_FRAGS free descriptors stop the queue (the rest
                    // of the burst waits). napi_tx=0: with TX interrupts on after 3/4 of what is in flight
                    // (virtqueue_enable_cb_delayed); if that many are already used, reap and restart at once. napi_tx=1:
                    // the burst's enable_cb_delayed below does the same, and a TX or RX poll wakes the queue.
                    if (tx.FreeDescriptors < TxWakeThreshold)
                    {
                        txStopped = true;
                        stops++;
                        if (!napiTx && tx.EnableInterruptsAfter(tx.InFlight * 3 / 4 + 1))
                        {
                            ReapTx();
                            if (tx.FreeDescriptors >= TxWakeThreshold)
                            {
                                txStopped = false;
                                tx.DisableInterrupts();
                            }
                        }
                        break;
                    }
                }
                // The burst's last frame: interrupt after 3/4 of what is in flight (retry while that many are done).
                while (napiTx && tx.InFlight > 0 && tx.EnableInterruptsAfter(tx.InFlight * 3 / 4 + 1))
                {
                    tx.DisableInterrupts();
                    ReapTx();
                }
                tx.KickIfNeeded();
            }
            int n = rx.GetUsed(used[..(int)Math.Min(used.Length, nextSend - nextRecv)]);
            if (n > 0)
            {
                for (int i = 0; i < n; i++)
                {
                    int slot = (int)used[i].Token;
                    if (verify) Verify(rxArea.Slice(slot * stride, (int)Math.Min(used[i].Length, (uint)bufferBytes)), nextRecv, frameBytes);
                    nextRecv++;
                    PostRx(slot);
                }
                rx.KickIfNeeded();
                continue;
            }
            if (transmitted) continue;
            if (nextSend < packets && !txStopped) stops++;            // the window (the RX buffers) is too full to send
            // Nothing to send, nothing received: interrupt on the next used buffer, then sleep.
            ThrowIfBroken();
            if (rx.EnableInterrupts()) { rx.DisableInterrupts(); continue; }
            sleeps++;
            if (!napiTx && !txStopped)
            {
                if (!WaitForCall(Rx, TimeSpan.FromSeconds(5), cancellation))
                    throw NoCall(Rx, $"packet {nextRecv} did not come back");
                Calls[Rx].TryRead(out _);
                rx.DisableInterrupts();                             // skb_recv_done: virtqueue_disable_cb
                continue;
            }
            // napi_tx, or a stopped napi_tx=0 queue: a TX interrupt wakes the driver too.
            if (!WaitForCalls(TimeSpan.FromSeconds(5), cancellation))
                throw NoCall(Rx, $"packet {nextRecv} did not come back");
            // Threaded: only the eventfds poll(2) reported are read (lock-step: both, nothing polled).
            if ((Options.LockStep || callReady[0]) && Calls[Rx].TryRead(out _)) rx.DisableInterrupts();
            // napi_tx=0: the TX interrupt is taken at the top of the loop; one poll(2) reported is taken here.
            if (!napiTx && (Options.LockStep || callReady[1]) && Calls[Tx].TryRead(out _))
            {
                txIrqsTaken = Calls[Tx].Sent;
                tx.DisableInterrupts();
                txStopped = false;
            }
            if (napiTx && (Options.LockStep || callReady[1]) && Calls[Tx].TryRead(out _))
            {
                tx.DisableInterrupts();                             // skb_xmit_done: virtqueue_disable_cb
                do ReapTx(); while (tx.EnableInterrupts());         // virtnet_poll_tx: reap, re-arm for the next
                if (tx.FreeDescriptors >= TxWakeThreshold) txStopped = false;
            }
        }
        sw.Stop();
        var cpu = Environment.CpuUsage.TotalTime - cpu0;
        sent += packets;
        received += packets;
        var (k1, i1, ks1, is1) = Notifications;
        return new LoopbackResult(frameBytes, batch, (NegotiatedFeatures & VirtioConfig.Bit(VirtioConfig.RING_F_EVENT_IDX)) != 0,
            packets, sw.Elapsed, k1 - k0, i1 - i0, ks1 - ks0, is1 - is0, cpu, napiTx, sleeps,
            Interlocked.Read(ref Device.Counters.WorkerWakeups) - wake0, Interlocked.Read(ref Device.Counters.RxNoBuffer) - noBuf0, stops);
    }

    readonly EventNotifier[] bothCalls = new EventNotifier[2];
    readonly bool[] callReady = new bool[2];

    /// <summary>Sleeps until the RX or the TX call eventfd is signalled; lock-step: runs the device's pending work.</summary>
    bool WaitForCalls(TimeSpan timeout, CancellationToken cancellation)
    {
        if (Options.LockStep) return Device.RunPending();
        bothCalls[0] = Calls[Rx];
        bothCalls[1] = Calls[Tx];
        var end = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        while (true)
        {
            cancellation.ThrowIfCancellationRequested();
            if (NotifierPoll.WaitAny(bothCalls, callReady, TimeSpan.FromMilliseconds(100)) >= 0) return true;
            if (Stopwatch.GetTimestamp() > end) return false;
        }
    }

    void Verify(ReadOnlySpan<byte> got, long seq, int frameBytes)
    {
        if (got.Length != VirtioNet.HdrV1Size + frameBytes)
            throw new InvalidDataException($"{Name}: packet {seq} came back with {got.Length - VirtioNet.HdrV1Size} bytes, sent {frameBytes}");
        var f = got[VirtioNet.HdrV1Size..];
        long s = BinaryPrimitives.ReadInt64LittleEndian(f[14..]);
        if (s != seq) throw new InvalidDataException($"{Name}: expected packet {seq}, got packet {s} (out of order or lost)");
        if (!f[..6].SequenceEqual(Mac)) throw new InvalidDataException($"{Name}: packet {seq}: destination MAC corrupted");
        for (int i = 22; i < frameBytes; i++)
            if (f[i] != (byte)i) throw new InvalidDataException($"{Name}: packet {seq}: byte {i} is 0x{f[i]:x2}, sent 0x{(byte)i:x2}");
    }

    public override IRenderable ToRenderable()
    {
        var grid = new Grid().AddColumn();
        grid.AddRow(new Markup(Markup.Escape($"MAC {VdpaNetDevice.FormatMac(Mac)}, MTU {Mtu}, sent {Sent:N0}, received {Received:N0}, looped by the device {NetDevice.LoopedPackets:N0}")));
        grid.AddRow(base.ToRenderable());
        return grid;
    }
}
