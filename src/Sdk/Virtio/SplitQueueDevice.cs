using System.Runtime.CompilerServices;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Virtio;

/// <summary>
/// The device side of a split virtqueue (what vhost and QEMU's virtqueue_pop/push do): pops available chains as
/// translated, permission-checked segments of its address space, pushes used entries with the written length, and
/// decides whether to interrupt the driver (used_event with EVENT_IDX, else the NO_INTERRUPT flag).
/// <para>
/// The ring is written by a driver the device does not trust. Every malformed chain (see <see cref="VirtqErrorKind"/>) is
/// refused with a <see cref="VirtqError"/>, counted, and marks the queue broken: <see cref="TryPop"/> then returns false
/// until <see cref="Reset"/>, and the device model should set <see cref="VirtioDeviceStatus.NeedsReset"/>. Nothing outside
/// mapped memory is ever read or written, and no exception escapes for anything the driver wrote.
/// </para>
/// One thread at a time uses a device queue (the device's thread); the driver may run on another.
/// </summary>
public sealed unsafe class SplitQueueDevice : SplitQueue
{
    readonly VirtqChain?[] chains;
    readonly long[] errorCounts = new long[Enum.GetValues<VirtqErrorKind>().Length];
    byte[] indirectScratch = []; // pinned copy of the indirect table being walked (the driver cannot change it under us)
    ushort lastAvail, shadowAvail, usedShadow, usedPublished, signalledUsed;
    bool signalledValid, initialised, kicksEnabled = true;
    int inFlight;
    VirtqError? error;

    /// <summary>
    /// A device queue on <paramref name="layout"/> in <paramref name="space"/>. <paramref name="lastAvailIdx"/> is where the
    /// device starts reading the available ring (VHOST_SET_VRING_BASE); the used index starts at the ring's current value.
    /// Nothing is read until the first <see cref="TryPop"/>.
    /// </summary>
    public SplitQueueDevice(AddressSpace space, SplitRing layout, VirtioFeatures features, EventNotifier? call = null,
        string name = "vq", ushort lastAvailIdx = 0)
        : base(space, layout, features, name, device: true)
    {
        Call = call;
        chains = new VirtqChain?[layout.Size];
        lastAvail = shadowAvail = lastAvailIdx;
    }

    /// <summary>Signalled when the device decides to interrupt the driver (vhost's callfd).</summary>
    public EventNotifier? Call { get; set; }

    /// <summary>The next available-ring index the device will read (last_avail_idx; VHOST_GET_VRING_BASE).</summary>
    public ushort LastAvailIdx => lastAvail;

    /// <summary>The used index the device has written so far (published by <see cref="Flush"/>).</summary>
    public ushort UsedIdx => usedShadow;

    public override int InFlight => inFlight;

    /// <summary>True after a malformed chain: the queue pops nothing until <see cref="Reset"/>.</summary>
    public bool IsBroken => error is not null;

    /// <summary>The error that broke the queue, or null.</summary>
    public VirtqError? Error => error;

    /// <summary>Raised (on the device thread) when the queue breaks, so the device model can set NEEDS_RESET.</summary>
    public event Action<SplitQueueDevice, VirtqError>? Broken;

    /// <summary>How many errors of <paramref name="kind"/> this queue has seen (kept across <see cref="Reset"/>).</summary>
    public long ErrorCount(VirtqErrorKind kind) => Volatile.Read(ref errorCounts[(int)kind]);

    /// <summary>Every error kind seen, with its count.</summary>
    public IReadOnlyDictionary<VirtqErrorKind, long> Errors
        => Enum.GetValues<VirtqErrorKind>().Where(k => ErrorCount(k) > 0).ToDictionary(k => k, ErrorCount);

    // ---- pop ----------------------------------------------------------------------------------------

    /// <summary>
    /// Takes the next available chain, translated. False when the ring is empty — then, with kick notifications
    /// enabled, the driver has been asked to kick on its next buffer — or when the queue is broken (see <see cref="Error"/>).
    /// </summary>
    public bool TryPop(out VirtqChain chain)
    {
        throw new NotImplementedException();
    }

    /// <summary>Pops up to <paramref name="into"/>.Length chains (reading the available index once); returns how many.</summary>
    public int Pop(Span<VirtqChain?> into)
    {
        int n = 0;
        while (n < into.Length && TryPop(out var c)) into[n++] = c;
        return n;
    }

    // ---- push ---------------------------------------------------------------------------------------

    /// <summary>
    /// Returns <paramref name="chain"/> to the driver with <paramref name="written"/> bytes written to its writable part
    /// (a used ring entry). The driver sees it after <see cref="Flush"/>.
    /// </summary>
    public void Push(VirtqChain chain, uint written)
    {
        throw new NotImplementedException();
    }

    /// <summary>
    /// Publishes the used index and notifies the driver through <see cref="Call"/> if it wants an interrupt
    /// (EVENT_IDX: the new index passed used_event; otherwise NO_INTERRUPT is clear). Returns whether it notified.
    /// Nothing pushed since the last flush: returns false and counts nothing.
    /// </summary>
    public bool Flush()
    {
        throw new NotImplementedException();
    }

    // ---- kick suppression ---------------------------------------------------------------------------

    /// <summary>
    /// Asks the driver not to kick (clears nothing with EVENT_IDX — avail_event just stays behind —, sets NO_NOTIFY
    /// otherwise) while the device is busy polling the ring.
    /// </summary>
    public void DisableKicks()
    {
        throw new NotImplementedException();
    }

    /// <summary>
    /// Asks the driver to kick on its next buffer (avail_event = last_avail_idx with EVENT_IDX, else clears NO_NOTIFY),
    /// then re-reads the available index: true when buffers arrived meanwhile (pop them before sleeping).
    /// </summary>
    public bool EnableKicks()
    {
        throw new NotImplementedException();
    }

    /// <summary>
    /// Forgets all state (the driver reset the device): not broken, nothing in flight, reading from
    /// <paramref name="lastAvailIdx"/> again, the used index re-read from the ring. Error counts are kept.
    /// </summary>
    public void Reset(ushort lastAvailIdx = 0)
    {
        throw new NotImplementedException();
    }

    // ---- display ------------------------------------------------------------------------------------

    public override IRenderable ChainsInFlight()
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"{Name}: chains held by the device")) };
        t.AddColumn("head").AddColumn("descriptors").AddColumn("readable").AddColumn("writable").AddColumn("segments");
        foreach (var c in chains)
            if (c is { InFlight: true })
                t.AddRow(c.Head.ToString(), c.Descriptors + (c.Indirect ? " (indirect)" : ""), $"{c.ReadableBytes} B", $"{c.WritableBytes} B",
                    Markup.Escape(string.Join(" ", c.Segments.ToArray().Take(8)) + (c.Segments.Length > 8 ? " …" : "")));
        return t;
    }

    public override IRenderable ToRenderable()
    {
        var t = NewTable("device");
        t.AddRow("device last_avail_idx", lastAvail.ToString());
        t.AddRow("device used idx (published)", $"{usedShadow} ({usedPublished})");
        t.AddRow("in flight", inFlight.ToString());
        t.AddRow("interrupts sent / suppressed", $"{NotificationsSent:N0} / {NotificationsSuppressed:N0}");
        t.AddRow("kicks", kicksEnabled ? "enabled" : "disabled");
        var errs = Errors;
        t.AddRow("errors", errs.Count == 0 ? "none" : Markup.Escape(string.Join(", ", errs.Select(e => $"{e.Key} {e.Value}"))));
        t.AddRow("state", error is null ? "ok" : Markup.Escape($"BROKEN (needs reset): {error.Message}"));
        return t;
    }

    public override string ToString() => $"{Name}: device side, size {Size}, last_avail {lastAvail}, used {usedShadow}, in flight {inFlight}{(error is null ? "" : ", broken")}";
}
