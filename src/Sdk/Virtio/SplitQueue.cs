using System.Runtime.CompilerServices;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Virtio;

/// <summary>
/// What the driver side and the device side of a split virtqueue share: the ring's place in an address space, the
/// negotiated features, the notification counters and the table shown in the REPL. The two sides are separate objects
/// (each normally on its own thread) that meet only through ring memory, as a guest driver and a device do.
/// </summary>
public abstract unsafe class SplitQueue : IDisplayable
{
    private protected readonly RingAccess ring;
    private protected readonly ushort mask;
    readonly int _size;       // plain fields for the hot paths (what Size and EventIdx return)
    readonly bool _eventIdx;
    long _notified, _suppressed;

    private protected SplitQueue(AddressSpace space, SplitRing layout, VirtioFeatures features, string name, bool device)
    {
        ArgumentNullException.ThrowIfNull(space);
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        layout.Validate();
        if (!BitConverter.IsLittleEndian) throw new PlatformNotSupportedException("virtio rings are little-endian; this model runs on little-endian hosts");
        if ((features & VirtioFeatures.RingPacked) != 0)
            throw new ArgumentException("VIRTIO_F_RING_PACKED: the packed ring is not modelled; this is a split virtqueue", nameof(features));
        Space = space;
        Ring = layout;
        Features = features;
        Name = name;
        mask = (ushort)(layout.Size - 1);
        _size = layout.Size;
        _eventIdx = (features & VirtioFeatures.EventIdx) != 0;
        ring = new RingAccess(space, layout, device);
    }

    /// <summary>The queue's name, for display and errors.</summary>
    public string Name { get; }

    /// <summary>The space the ring and the buffers' addresses are in (a device behind an IOMMU uses an IOVA space).</summary>
    public AddressSpace Space { get; }

    /// <summary>Where the ring's three areas lie in guest memory.</summary>
    public SplitRing Ring { get; }

    /// <summary>Queue size (descriptors).</summary>
    public int Size => _size;

    /// <summary>Negotiated virtio features the ring uses.</summary>
    public VirtioFeatures Features { get; }

    /// <summary>VIRTIO_F_EVENT_IDX negotiated: used_event/avail_event suppress notifications.</summary>
    public bool EventIdx => _eventIdx;

    /// <summary>VIRTIO_F_INDIRECT_DESC negotiated: chains may use indirect tables.</summary>
    public bool IndirectDesc => (Features & VirtioFeatures.IndirectDesc) != 0;

    /// <summary>Notifications this side sent (driver: kicks; device: interrupts/calls).</summary>
    public long NotificationsSent => Volatile.Read(ref _notified);

    /// <summary>Notifications this side decided not to send (EVENT_IDX, or the other side's NO_NOTIFY / NO_INTERRUPT flag).</summary>
    public long NotificationsSuppressed => Volatile.Read(ref _suppressed);

    /// <summary>Buffers (chains) made available and not yet returned through the used ring, as this side sees it.</summary>
    public abstract int InFlight { get; }

    /// <summary>A table of the chains in flight on this side.</summary>
    public abstract IRenderable ChainsInFlight();

    private protected void CountNotification(bool sent, EventNotifier? notifier)
    {
        if (sent)
        {
            _notified++;
            notifier?.Signal();
        }
        else
        {
            _suppressed++;
            notifier?.Suppress();
        }
    }

    /// <summary>Reads a ring field through the address space for display (not counted as a fault), or null when it is unmapped.</summary>
    private protected ushort? Peek16(ulong address) => Space.Peek<ushort>(address);

    private protected static string Show(ushort? v) => v is { } x ? x.ToString() : "—";

    private protected static string FeatureNames(VirtioFeatures f)
    {
        var names = new List<string>();
        if ((f & VirtioFeatures.IndirectDesc) != 0) names.Add("INDIRECT_DESC");
        if ((f & VirtioFeatures.EventIdx) != 0) names.Add("EVENT_IDX");
        if ((f & VirtioFeatures.Version1) != 0) names.Add("VERSION_1");
        if ((f & VirtioFeatures.AccessPlatform) != 0) names.Add("ACCESS_PLATFORM");
        var rest = (ulong)f & ~(ulong)(VirtioFeatures.IndirectDesc | VirtioFeatures.EventIdx | VirtioFeatures.Version1 | VirtioFeatures.AccessPlatform);
        if (rest != 0) names.Add($"0x{rest:x}");
        return names.Count == 0 ? "none" : string.Join(" ", names);
    }

    private protected Table NewTable(string side)
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"{Name}: split virtqueue, {side} side")) };
        t.AddColumn("field").AddColumn("value");
        t.AddRow("size", Size.ToString());
        t.AddRow("features", Markup.Escape(FeatureNames(Features)));
        t.AddRow("address space", Markup.Escape(Space.Name));
        t.AddRow("ring", Markup.Escape($"desc 0x{Ring.DescAddress:x}, avail 0x{Ring.AvailAddress:x}, used 0x{Ring.UsedAddress:x}"));
        t.AddRow("avail idx (ring)", Show(Peek16(Ring.AvailAddress + 2)));
        t.AddRow("used idx (ring)", Show(Peek16(Ring.UsedAddress + 2)));
        return t;
    }

    /// <summary>The queue's state, for the REPL.</summary>
    public abstract IRenderable ToRenderable();
}

/// <summary>
/// Host pointers to a ring's three parts, translated (with the access each side needs) and cached until the address
/// space's generation changes — as vhost caches its ring translations (vq meta IOTLB) and drops them on invalidation.
/// The hot check is one load: the VM's mapping epoch, which every change of any of its spaces moves; only when it
/// moved is the space's generation compared. Each part must lie in one contiguous host range.
/// </summary>
internal sealed unsafe class RingAccess(AddressSpace space, SplitRing layout, bool device)
{
    readonly Vm _vm = space.Vm;
    long _epoch = -1; // the VM's mapping epoch when the pointers were last found current (epochs start at 0)
    long _generation = long.MinValue;
    public byte* Desc, Avail, Used;

    /// <summary>Whether nothing changed since the pointers were last validated (then they are used as they are).</summary>
    public bool Current
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        get => _vm.MappingEpoch == _epoch;
    }

    /// <summary>The mapping epoch the pointers (and translations cached with them) were validated at.</summary>
    public long Epoch => _epoch;

    /// <summary>Validates the pointers (re-translating the ring if the space's generation changed).</summary>
    public bool Ensure(out string? problem, out MemoryFault fault)
    {
        var e = _vm.MappingEpoch; // read first: a change after this moves it again
        if (space.Generation == _generation)
        {
            _epoch = e;
            problem = null;
            fault = default;
            return true;
        }
        if (!Refresh(out problem, out fault)) return false;
        _epoch = e;
        return true;
    }

    public void Invalidate()
    {
        _generation = long.MinValue;
        _epoch = -1;
    }

    bool Refresh(out string? problem, out MemoryFault fault)
    {
        var gen = space.Generation; // read first: a change after this shows up as a new generation next time
        var n = layout.Size;
        // The device only reads the descriptor table and the available ring and only writes the used ring.
        if (!Part(layout.DescAddress, SplitRing.DescBytes(n), device ? MemoryAccess.Read : MemoryAccess.ReadWrite, "descriptor table", out var d, out problem, out fault) ||
            !Part(layout.AvailAddress, SplitRing.AvailBytes(n), device ? MemoryAccess.Read : MemoryAccess.ReadWrite, "available ring", out var a, out problem, out fault) ||
            !Part(layout.UsedAddress, SplitRing.UsedBytes(n), device ? MemoryAccess.Write : MemoryAccess.ReadWrite, "used ring", out var u, out problem, out fault))
        {
            Invalidate();
            return false;
        }
        Desc = d;
        Avail = a;
        Used = u;
        _generation = gen;
        return true;
    }

    bool Part(ulong at, long bytes, MemoryAccess access, string what, out byte* host, out string? problem, out MemoryFault fault)
    {
        host = null;
        if (!space.TryGetSpan(at, (int)bytes, access, out var span, out fault))
        {
            problem = fault.Space is null
                ? $"the {what} [0x{at:x}, +{bytes}) spans two mappings of {space.Name} that are not contiguous on the host; place each ring part in one mapping"
                : $"the {what} [0x{at:x}, +{bytes}) is not accessible: {fault}";
            return false;
        }
        host = (byte*)Unsafe.AsPointer(ref span[0]);
        problem = null;
        return true;
    }

    // Field offsets in the available and used rings.
    public const int FlagsOff = 0, IdxOff = 2, RingOff = 4;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ushort AvailFlags() => ref *(ushort*)(Avail + FlagsOff);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ushort AvailIdx() => ref *(ushort*)(Avail + IdxOff);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ushort AvailRing(int i) => ref *(ushort*)(Avail + RingOff + 2 * i);

    /// <summary>used_event: the u16 after the available ring's entries.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ushort UsedEvent() => ref *(ushort*)(Avail + RingOff + 2 * layout.Size);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ushort UsedFlags() => ref *(ushort*)(Used + FlagsOff);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ushort UsedIdx() => ref *(ushort*)(Used + IdxOff);

    /// <summary>used ring element i: {u32 id; u32 len} as one u64 (id low) so it is written in one store.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ulong UsedElem(int i) => ref *(ulong*)(Used + RingOff + 8 * i);

    /// <summary>avail_event: the u16 after the used ring's entries.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public ref ushort AvailEvent() => ref *(ushort*)(Used + RingOff + 8 * layout.Size);
}
