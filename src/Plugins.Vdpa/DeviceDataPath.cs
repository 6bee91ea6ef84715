using System.Buffers.Binary;
using VirtLab.Plugins.Vdpa.Uapi;
using VirtLab.Sdk.Virtio;

namespace VirtLab.Plugins.Vdpa;

public sealed partial class VdpaNetDevice
{
    VirtqChain? pendingTx;       // popped, waiting for a receive buffer (nothing is dropped)
    long packets, bytes;

    public long LoopedPackets => Interlocked.Read(ref packets);
    public long LoopedBytes => Interlocked.Read(ref bytes);

    protected override void OnReset() => pendingTx = null;

    /// <summary>Packets between publications of the used rings (vhost-net's VHOST_NET_BATCH).</summary>
    public const int UsedBatch = 64;

    /// <summary>
    /// vdpasim_net_work: every TX chain is copied into the next RX chain and both are completed. As vhost-net does
    /// (handle_tx / handle_rx), the worker asks for no kicks while it is looking at the rings (NO_NOTIFY, or a stale
    /// avail_event with EVENT_IDX) and re-arms them only when a ring is empty, and it publishes the used rings and
    /// decides on interrupts once per <see cref="UsedBatch"/> packets and when it stops, not per packet — the driver's
    /// suppression (EVENT_IDX or NO_INTERRUPT) then applies to batches. With no receive buffer the TX chain is held
    /// until the driver adds one (counted as RxNoBuffer) instead of being dropped.
    /// </summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // the worker's hot loop: no ReadyToRun / Tier-0 passes first
    protected override void Process(SplitQueueDevice?[] queues)
    {
        var rx = queues[RxQueue];
        var tx = queues[TxQueue];
        if (rx is null || tx is null) return;
        if (pendingTx is { } p && p.Queue != tx) pendingTx = null;   // the queue was restarted
        tx.DisableKicks();
        rx.DisableKicks();
        int n = 0, unflushed = 0;
        long looped = 0, loopedBytes = 0;
        // The held chain lives in a local during the pass (a reference store to a field per packet is a GC write barrier).
        var pending = pendingTx;
        try
        {
            while ((++n & 63) != 0 || ShouldRun)
            {
                if (pending is null)
                {
                    if (!tx.TryPop(out var c))
                    {
                        // Empty: re-arm the kick, then look once more (buffers added meanwhile were not kicked).
                        if (tx.IsBroken || !tx.EnableKicks()) break;
                        tx.DisableKicks();
                        continue;
                    }
                    if (c.WritableBytes != 0)
                    {
                        NeedsReset("net tx: device-writable buffer in a transmit chain");
                        return;
                    }
                    pending = c;
                }
                if (!rx.TryPop(out var r))
                {
                    if (!rx.IsBroken && rx.EnableKicks())
                    {
                        rx.DisableKicks();
                        continue;
                    }
                    Interlocked.Increment(ref Counters.RxNoBuffer);
                    break;                                             // rx kicks stay armed: a new buffer wakes us
                }
                if (r.ReadableCount != 0)
                {
                    NeedsReset("net rx: device-readable buffer in a receive chain");
                    return;
                }
                var t = pending;
                long len = t.CopyReadableTo(r);
                if (len < t.ReadableBytes) Counters.Error("net rx: buffer shorter than the frame (truncated)");
                pending = null;
                tx.Push(t, 0);
                rx.Push(r, (uint)len);
                looped++;
                loopedBytes += len;
                if (++unflushed == UsedBatch)
                {
                    Publish();
                    unflushed = 0;
                }
            }
        }
        finally
        {
            pendingTx = pending;
            Publish();
        }

        // Counted before the driver can see the packets, so its view of the counters is never behind its used rings.
        void Publish()
        {
            if (looped != 0)
            {
                Interlocked.Add(ref packets, looped);
                Interlocked.Add(ref bytes, loopedBytes);
                Interlocked.Add(ref Counters.Requests, looped);
                looped = loopedBytes = 0;
            }
            tx.Flush();
            rx.Flush();
        }
    }
}

public sealed partial class VdpaBlockDevice
{
    long reads, writes, flushes, getIds, ioErrors, unsupported;
    // Scratch for the request header and GET_ID reply, reused by the one worker thread that runs Process.
    readonly byte[] hdrBuf = new byte[VirtioBlk.OutHdrSize], idBuf = new byte[VirtioBlk.IdBytes];

    public long Reads => Interlocked.Read(ref reads);
    public long Writes => Interlocked.Read(ref writes);
    public long Flushes => Interlocked.Read(ref flushes);
    public long IoErrors => Interlocked.Read(ref ioErrors);

    /// <summary>
    /// vdpasim_blk_handle_req: a 16-byte virtio_blk_outhdr in the readable part, data, and the status byte as the last
    /// writable byte, written after the data. IN and OUT must address whole sectors inside the disk (else IOERR);
    /// FLUSH needs VIRTIO_BLK_F_FLUSH (else UNSUPP); GET_ID returns up to 20 bytes. A request without a readable
    /// header or a writable status byte cannot be completed: NEEDS_RESET.
    /// </summary>
    protected override void Process(SplitQueueDevice?[] queues)
    {
        var q = queues[0];
        if (q is null) return;
        int n = 0;
        while ((++n & 15) != 0 || ShouldRun)
        {
            if (!q.TryPop(out var c)) break;
            if (c.ReadableBytes < VirtioBlk.OutHdrSize || c.WritableBytes < 1)
            {
                NeedsReset(c.ReadableBytes < VirtioBlk.OutHdrSize
                    ? "blk: request header not in a device-readable buffer"
                    : "blk: no device-writable status byte");
                return;
            }
            var hdr = hdrBuf.AsSpan();
            c.ReadReadable(0, hdr);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(hdr);
            ulong sector = BinaryPrimitives.ReadUInt64LittleEndian(hdr[8..]);
            long outData = c.ReadableBytes - VirtioBlk.OutHdrSize, inData = c.WritableBytes - 1;
            byte status = VirtioBlk.S_OK;
            int written = 0;
            switch (type)
            {
                case VirtioBlk.T_IN:
                    if (!InRange(sector, inData)) { status = VirtioBlk.S_IOERR; break; }
                    written = c.WriteWritable(0, disk.AsSpan((int)(sector << VirtioBlk.SectorShift), (int)inData));
                    Interlocked.Increment(ref reads);
                    break;
                case VirtioBlk.T_OUT:
                    if (!InRange(sector, outData)) { status = VirtioBlk.S_IOERR; break; }
                    c.ReadReadable(VirtioBlk.OutHdrSize, disk.AsSpan((int)(sector << VirtioBlk.SectorShift), (int)outData));
                    Interlocked.Increment(ref writes);
                    break;
                case VirtioBlk.T_FLUSH:
                    if (!Negotiated(VirtioBlk.F_FLUSH)) { status = VirtioBlk.S_UNSUPP; Interlocked.Increment(ref unsupported); break; }
                    Interlocked.Increment(ref flushes);   // a RAM disk has nothing volatile to write back
                    break;
                case VirtioBlk.T_GET_ID:
                    var id = idBuf.AsSpan();
                    id.Clear();
                    DefaultId.CopyTo(id);
                    written = c.WriteWritable(0, id[..(int)Math.Min(inData, VirtioBlk.IdBytes)]);
                    Interlocked.Increment(ref getIds);
                    break;
                default:
                    status = VirtioBlk.S_UNSUPP;
                    Interlocked.Increment(ref unsupported);
                    break;
            }
            if (status == VirtioBlk.S_IOERR) Interlocked.Increment(ref ioErrors);
            // The status byte goes last, in the last writable byte, after the data.
            Thread.MemoryBarrier();
            c.WriteWritable(inData, [status]);
            q.Push(c, (uint)written + 1);
            q.Flush();
            Interlocked.Increment(ref Counters.Requests);
            Interlocked.Add(ref Counters.Bytes, written + (type == VirtioBlk.T_OUT && status == 0 ? outData : 0));
        }
    }

    bool InRange(ulong sector, long length)
    {
        if (length % VirtioBlk.SectorSize != 0 || length > (long)SizeMax * SegMax) return false;
        ulong sectors = (ulong)length >> VirtioBlk.SectorShift;
        return sector <= CapacitySectors && sectors <= CapacitySectors - sector;
    }
}
