using System.Collections.Immutable;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Machine.Sim;
using VirtLab.Sdk.Measure;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// A virtual machine: memslots over host memory, vCPUs that run declarative <see cref="Workload"/>s, and KVM's
/// dirty-logging primitives. <see cref="Create(VmOptions)"/> picks the backend (real KVM or the simulator); this base
/// class owns the slots, guest memory, bounds checks and argument validation, and calls the backend only with
/// requests the kernel would accept.
/// </summary>
public abstract class Vm : IDisposable, IDisplayable
{
    readonly object slotLock = new();
    ImmutableArray<MemSlot> slots = []; // sorted by gpa; replaced, never mutated, so readers need no lock
    readonly CancellationTokenSource disposeCts = new();
    int disposed;
    int running;
    int runThread; // managed thread id of the caller of Run, while it runs
    readonly VmDeviceList devices = new();
    GuestPhysicalSpace? physicalSpace;

    private protected Vm(VmOptions options)
    {
        Options = options;
        Vcpus = options.Vcpus;
        GuestPhysBits = options.GuestPhysBits ?? HostInfo.PhysAddressBits;
        Memory = new GuestMemory(this);
        if (options.DirtyRingBytes > 0) DirtyRing = new DirtyRing(this, options.DirtyRingBytes);
    }

    // ---- creation -------------------------------------------------------------------------------

    /// <summary>A VM with a test slot of <paramref name="memory"/> bytes (slot 1) and a small system slot 0.</summary>
    public static Vm Create(Size memory, int vcpus = 1, Backing backing = Backing.Anonymous, Backend backend = Backend.Auto,
        ulong? testSlotGpa = null, bool manualProtect = false, bool initiallySet = false, int dirtyRingBytes = 0)
        => Create(new VmOptions(memory)
        {
            Vcpus = vcpus, Backing = backing, Backend = backend, TestSlotGpa = testSlotGpa,
            ManualProtect = manualProtect, InitiallySet = initiallySet, DirtyRingBytes = dirtyRingBytes,
        });

    public static Vm Create(VmOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        switch (options.Backend)
        {
            case Backend.Sim:
                return SimBackend.Create(options);
            case Backend.Kvm:
                if (!IsKvmUsable(out var reason))
                    throw new PlatformNotSupportedException($"the KVM backend is not usable here: {reason}. Use Backend.Sim (or Backend.Auto to fall back to it).");
                return CreateKvm(options);
            case Backend.Auto:
                return IsKvmUsable(out _) ? CreateKvm(options) : SimBackend.Create(options);
            default:
                throw new ArgumentOutOfRangeException(nameof(options), options.Backend, "backend must be Auto, Kvm or Sim");
        }
    }

    /// <summary>Whether <see cref="Backend.Kvm"/> works here, and if not why. Setting the environment variable
    /// <c>VIRTLAB_DISABLE_KVM=1</c> makes it unusable (Auto then picks the simulator; KVM tests skip).</summary>
    public static bool IsKvmUsable(out string reason)
    {
        if (Environment.GetEnvironmentVariable("VIRTLAB_DISABLE_KVM") is { Length: > 0 } v && v != "0")
        {
            reason = "disabled by VIRTLAB_DISABLE_KVM";
            return false;
        }
        return KvmBackend.IsUsable(out reason);
    }

    static Vm CreateKvm(VmOptions options) => KvmBackend.Create(options);

    /// <summary>Slot 0's size when <see cref="VmOptions.SystemMemory"/> is not given: 4 MiB + 64 KiB per vCPU, in 2 MiB units.</summary>
    public static Size DefaultSystemMemory(int vcpus) => new(VmOptions.AlignUp((4L << 20) + vcpus * (64L << 10), 2L << 20));

    /// <summary>
    /// Adds system slot 0 at gpa 0 and test slot 1 where the selftests put it (or at <see cref="VmOptions.TestSlotGpa"/>).
    /// Backends call this once their VM exists (and before creating vCPUs if they must).
    /// </summary>
    /// <param name="guestPhysBits">The backend's guest physical address width, when it knows better than the host CPU.</param>
    /// <param name="systemMemory">The backend's slot 0 size when <see cref="VmOptions.SystemMemory"/> is not set.</param>
    private protected void CreateDefaultSlots(int? guestPhysBits = null, Size? systemMemory = null)
    {
        if (guestPhysBits is { } bits) GuestPhysBits = bits;
        var o = Options;
        var sys = o.SystemMemory ?? systemMemory ?? DefaultSystemMemory(o.Vcpus);
        AddSlotCore(0, sys.Bytes, Backing.Anonymous, 0, false);
        var gpa = o.TestSlotGpa ?? DefaultTestSlotGpa(o.Memory.Bytes, o.Backing, (ulong)sys.Bytes);
        AddSlotCore(1, o.Memory.Bytes, o.Backing, gpa, o.LogDirtyPages);
    }

    /// <summary>The selftests' placement: (max_gfn − npages) · 4 KiB, aligned down to the backing's page size.</summary>
    ulong DefaultTestSlotGpa(long size, Backing backing, ulong systemEnd)
    {
        var maxGfn = (1UL << (GuestPhysBits - 12)) - 1;
        var pages = (ulong)size >> 12;
        var pageSize = (ulong)backing.PageSize();
        if (pages >= maxGfn || ((maxGfn - pages) << 12) / pageSize * pageSize < systemEnd)
            throw new ArgumentOutOfRangeException(nameof(size),
                $"a test slot of {new Size(size)} does not fit below the top of a {GuestPhysBits}-bit guest-physical space ({new Size((long)Math.Min(MaxGpa, long.MaxValue))}) above the {new Size((long)systemEnd)} system slot");
        return ((maxGfn - pages) << 12) / pageSize * pageSize;
    }

    // ---- properties -----------------------------------------------------------------------------

    public VmOptions Options { get; }

    public abstract Backend Backend { get; }

    public int Vcpus { get; }

    /// <summary>The test slot's backing.</summary>
    public Backing Backing => Options.Backing;

    public GuestMemory Memory { get; }

    /// <summary>Guest-physical memory as a device without an IOMMU sees it (translate + bounds, faults instead of exceptions).</summary>
    public GuestPhysicalSpace PhysicalSpace => physicalSpace ?? Interlocked.CompareExchange(ref physicalSpace, new(this), null) ?? physicalSpace;

    /// <summary>Attached devices, in attach order.</summary>
    public IReadOnlyList<VmDevice> Devices => devices.Snapshot;

    /// <summary>Attaches a device model (it is disposed with the VM, before guest memory goes away) and returns it.</summary>
    public T Attach<T>(T device) where T : VmDevice => devices.Attach(this, device);

    /// <summary>Guest physical address width; every slot ends at or below <see cref="MaxGpa"/>.</summary>
    public int GuestPhysBits { get; private set; }

    /// <summary>2^<see cref="GuestPhysBits"/>: the end of the guest-physical space.</summary>
    public ulong MaxGpa => 1UL << GuestPhysBits;

    public bool ManualProtect => Options.ManualProtect;

    public bool InitiallySet => Options.InitiallySet;

    /// <summary>The dirty rings, when <see cref="VmOptions.DirtyRingBytes"/> is set; else null.</summary>
    public DirtyRing? DirtyRing { get; }

    /// <summary>Most vCPUs this backend allows.</summary>
    public virtual int MaxVcpus => VmOptions.MaxVcpusDefault;

    /// <summary>Slot ids allowed are 0 … MaxMemslots − 1 (KVM_CAP_NR_MEMSLOTS).</summary>
    public virtual int MaxMemslots => 32764;

    /// <summary>Slots ordered by id.</summary>
    public IReadOnlyList<MemSlot> Slots => SlotsSnapshot.OrderBy(s => s.Id).ToArray();

    public MemSlot SystemSlot => Slot(0);

    /// <summary>Slot 1, the memory <see cref="VmOptions.Memory"/> asked for.</summary>
    public MemSlot TestSlot => Slot(1);

    public bool IsDisposed => Volatile.Read(ref disposed) != 0;

    /// <summary>Whether a workload is running now.</summary>
    public bool IsRunning => Volatile.Read(ref running) != 0;

    internal ImmutableArray<MemSlot> SlotsSnapshot => slots; // one reference inside: reads are atomic

    public MemSlot Slot(int id)
    {
        ThrowIfDisposed();
        return FindSlot(id) ?? throw new ArgumentException(
            $"there is no memslot {id}; this VM has slots {string.Join(", ", SlotsSnapshot.Select(s => s.Id).Order())}", nameof(id));
    }

    internal MemSlot? FindSlot(int id)
    {
        foreach (var s in SlotsSnapshot) if (s.Id == id) return s;
        return null;
    }

    internal MemSlot? FindSlotAt(ulong gpa)
    {
        var a = SlotsSnapshot;
        int lo = 0, hi = a.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            var s = a[mid];
            if (gpa < s.Gpa) hi = mid - 1;
            else if (gpa >= s.EndGpa) lo = mid + 1;
            else return s;
        }
        return null;
    }

    // ---- memslots -------------------------------------------------------------------------------

    /// <summary>
    /// Adds a memslot of <paramref name="size"/> bytes. Without <paramref name="gpa"/> it goes right below the lowest
    /// non-system slot (aligned to its backing's page size); without <paramref name="id"/> it takes the lowest free id ≥ 2.
    /// </summary>
    public MemSlot AddSlot(Size size, Backing? backing = null, ulong? gpa = null, int? id = null, bool logDirtyPages = false)
    {
        ThrowIfDisposed();
        var b = backing ?? Options.Backing;
        lock (slotLock)
        {
            var slotId = id ?? NextFreeId();
            return AddSlotCore(slotId, size.Bytes, b, gpa ?? PlaceBelow(size.Bytes, b), logDirtyPages);
        }
    }

    /// <summary>Changes a slot's size. KVM cannot resize a memslot in place: the slot is deleted and re-added at the same
    /// gpa with fresh memory (contents are not kept) and the same flags.</summary>
    public MemSlot ResizeSlot(int id, Size newSize)
    {
        ThrowIfDisposed();
        lock (slotLock)
        {
            var old = Slot(id); // re-checks `disposed` under the lock
            if (old.IsSystem) throw new InvalidOperationException("slot 0 is the system slot (code, stacks, page tables); it cannot be resized");
            ThrowIfRunning("resize a memslot");
            ValidateSlot(id, newSize.Bytes, old.Backing, old.Gpa, ignore: old);
            CheckHostMemory(newSize.Bytes - old.Size.Bytes);
            var mapping = HostMapping.Create(newSize.Bytes, old.Backing, $"slot {id}");
            var log = old.LogDirtyPages;
            try
            {
                DeleteMemoryRegion(old);
                Retire([old]);
                old.Mapping.Dispose();
            }
            catch
            {
                mapping.Dispose();
                throw;
            }
            return Install(id, old.Gpa, mapping, log);
        }
    }

    /// <summary>Deletes a memslot (memory_size 0) and unmaps its memory.</summary>
    public void RemoveSlot(int id)
    {
        ThrowIfDisposed();
        lock (slotLock)
        {
            var s = Slot(id); // re-checks `disposed` under the lock
            if (s.IsSystem) throw new InvalidOperationException("slot 0 is the system slot (code, stacks, page tables); it cannot be removed");
            ThrowIfRunning("remove a memslot");
            DeleteMemoryRegion(s);
            Retire([s]);
            s.Mapping.Dispose();
        }
    }

    MemSlot AddSlotCore(int id, long size, Backing backing, ulong gpa, bool logDirtyPages)
    {
        lock (slotLock)
        {
            ThrowIfDisposed(); // under the lock: Dispose retires the slots under it too
            ValidateSlot(id, size, backing, gpa, ignore: null);
            if (FindSlot(id) is { } existing) throw new ArgumentException($"memslot {id} already exists ({existing}); pick another id or remove it first", nameof(id));
            CheckHostMemory(size);
            var mapping = HostMapping.Create(size, backing, $"slot {id}");
            return Install(id, gpa, mapping, logDirtyPages);
        }
    }

    MemSlot Install(int id, ulong gpa, HostMapping mapping, bool logDirtyPages)
    {
        var slot = new MemSlot(this, id, gpa, mapping);
        try
        {
            SetMemoryRegion(slot, logDirtyPages);
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
        slot.SetLogFlag(logDirtyPages);
        Publish(SlotsSnapshot.Add(slot).Sort((a, b) => a.Gpa.CompareTo(b.Gpa)));
        return slot;
    }

    void Publish(ImmutableArray<MemSlot> next) => ImmutableInterlocked.InterlockedExchange(ref slots, next);

    /// <summary>Takes slots out of the VM (under the slot lock) and waits until no dirty-log ioctl that still saw them
    /// as current is in flight: only then may their id be re-created with another size, or the VM fd be closed.</summary>
    void Retire(IReadOnlyCollection<MemSlot> gone)
    {
        foreach (var s in gone) s.MarkRemoved();
        Publish(SlotsSnapshot.RemoveRange(gone));
        DirtyLogCall.WaitUntilNoneFor(gone);
    }

    /// <summary>
    /// A thread's announcement that it is inside a dirty-log ioctl for a slot — without atomics or locks on that hot
    /// path. A writer that retires slots marks them removed, issues a process-wide memory barrier and then waits until no
    /// announcement names them (an asymmetric Dekker handshake): a reader that found its slot current is visible to the
    /// writer by then. So the kernel never writes the bitmap of a newer, larger slot with the same id into a buffer
    /// sized for the old one, and never gets an fd that Dispose closed (and the process may have reused) meanwhile.
    /// </summary>
    sealed class DirtyLogCall
    {
        MemSlot? slot;
        [ThreadStatic] static DirtyLogCall? current;
        static readonly List<WeakReference<DirtyLogCall>> all = []; // one per thread that made a call; pruned as threads die

        public static DirtyLogCall Enter(MemSlot slot)
        {
            var c = current ?? Register();
            c.slot = slot; // a plain store: the writer's process-wide barrier orders it before our checks of the slot
            return c;
        }

        public void Exit() => Volatile.Write(ref slot, null);

        static DirtyLogCall Register()
        {
            var c = new DirtyLogCall();
            lock (all)
            {
                all.RemoveAll(w => !w.TryGetTarget(out _));
                all.Add(new WeakReference<DirtyLogCall>(c));
            }
            return current = c;
        }

        public static void WaitUntilNoneFor(IReadOnlyCollection<MemSlot> gone)
        {
            if (gone.Count == 0) return;
            Interlocked.MemoryBarrierProcessWide();
            List<DirtyLogCall> calls = [];
            lock (all)
                foreach (var w in all)
                    if (w.TryGetTarget(out var c)) calls.Add(c);
            var spin = new SpinWait();
            foreach (var c in calls)
                while (Volatile.Read(ref c.slot) is { } s && gone.Contains(s)) spin.SpinOnce();
        }
    }

    void ValidateSlot(int id, long size, Backing backing, ulong gpa, MemSlot? ignore)
    {
        if (id < 0 || id >= MaxMemslots)
            throw new ArgumentOutOfRangeException(nameof(id), $"memslot ids are 0 … {MaxMemslots - 1} (KVM_CAP_NR_MEMSLOTS); got {id}");
        var pageSize = backing.PageSize();
        if (size <= 0)
            throw new ArgumentOutOfRangeException(nameof(size), $"memslot size must be positive (got {new Size(size)})");
        if (size % pageSize != 0)
            throw new ArgumentException(
                $"memslot size {new Size(size)} ({size} bytes) is not a multiple of the {backing.Name()} backing's page size {new Size(pageSize)}; " +
                $"use {new Size(VmOptions.AlignUp(size, pageSize))}", nameof(size));
        if (gpa % (ulong)pageSize != 0)
            throw new ArgumentException($"memslot gpa 0x{gpa:x} is not aligned to the {backing.Name()} backing's page size {new Size(pageSize)}", nameof(gpa));
        if (gpa >= MaxGpa || (ulong)size > MaxGpa - gpa)
            throw new ArgumentOutOfRangeException(nameof(gpa),
                $"memslot [0x{gpa:x}, 0x{gpa + (ulong)size:x}) ends past the {GuestPhysBits}-bit guest-physical space (0x{MaxGpa:x})");
        foreach (var s in SlotsSnapshot)
        {
            if (ReferenceEquals(s, ignore)) continue;
            if (gpa < s.EndGpa && s.Gpa < gpa + (ulong)size)
                throw new ArgumentException(
                    $"memslot {id} [0x{gpa:x}, 0x{gpa + (ulong)size:x}) overlaps slot {s.Id} [0x{s.Gpa:x}, 0x{s.EndGpa:x}); memslots may not overlap (the kernel would return EEXIST)", nameof(gpa));
        }
    }

    void CheckHostMemory(long adding)
    {
        var ram = HostInfo.MemTotalBytes;
        if (ram <= 0 || adding <= 0) return;
        long total = adding;
        foreach (var s in SlotsSnapshot) total += s.Mapping.Length;
        if (total > ram)
            throw new ArgumentOutOfRangeException(nameof(adding),
                $"guest memory would be {new Size(total)}, more than this host has ({new Size(ram)} of RAM, MemTotal in /proc/meminfo)");
    }

    int NextFreeId()
    {
        for (int i = 2; i < MaxMemslots; i++) if (FindSlot(i) is null) return i;
        throw new InvalidOperationException($"all {MaxMemslots} memslot ids are in use");
    }

    ulong PlaceBelow(long size, Backing backing)
    {
        var pageSize = (ulong)backing.PageSize();
        var sys = FindSlot(0);
        ulong floor = sys?.EndGpa ?? 0;
        ulong top = MaxGpa;
        foreach (var s in SlotsSnapshot) if (!s.IsSystem && s.Gpa < top) top = s.Gpa;
        if (top < floor + (ulong)size)
            throw new ArgumentException($"no room for {new Size(size)} below 0x{top:x}; pass gpa explicitly");
        var gpa = (top - (ulong)size) / pageSize * pageSize;
        if (gpa < floor)
            throw new ArgumentException($"no room for {new Size(size)} aligned to {new Size((long)pageSize)} below 0x{top:x}; pass gpa explicitly");
        return gpa;
    }

    // ---- dirty logging --------------------------------------------------------------------------

    internal void SetLogDirtyPages(MemSlot slot, bool on)
    {
        ThrowIfDisposed();
        lock (slotLock)
        {
            ThrowIfDisposed();
            CheckOwned(slot);
            if (slot.LogDirtyPages == on) return; // KVM treats an unchanged flags update as a no-op
            SetMemoryRegion(slot, on);
            slot.SetLogFlag(on);
        }
    }

    internal void GetDirtyLog(MemSlot slot, DirtyBitmap into)
    {
        ArgumentNullException.ThrowIfNull(slot);
        ArgumentNullException.ThrowIfNull(into);
        // Announced before the checks: the kernel writes npages bits of whatever slot has this id at the time of the
        // ioctl, so the slot must not be resized (nor the VM fd closed) between the size check and the call.
        var call = DirtyLogCall.Enter(slot);
        try
        {
            ThrowIfDisposed();
            CheckOwned(slot);
            CheckNoRing("KVM_GET_DIRTY_LOG");
            CheckLogging(slot, "KVM_GET_DIRTY_LOG");
            if (into.Pages != slot.Pages)
                throw new ArgumentException($"the bitmap has {into.Pages} pages but slot {slot.Id} has {slot.Pages}", nameof(into));
            GetDirtyLogCore(slot, into.Words);
        }
        finally
        {
            call.Exit();
        }
    }

    /// <summary>Checks in the kernel's order (kvm_clear_dirty_log_protect): ENXIO for a ring, EINVAL for first_page,
    /// ENOENT for a slot that does not log, EINVAL for the range and for num_pages.</summary>
    internal void ClearDirtyLog(MemSlot slot, long firstPage, long numPages, DirtyBitmap? mask)
    {
        ArgumentNullException.ThrowIfNull(slot);
        var call = DirtyLogCall.Enter(slot); // see GetDirtyLog
        try
        {
            ThrowIfDisposed();
            CheckOwned(slot);
            CheckNoRing("KVM_CLEAR_DIRTY_LOG");
            var n = slot.Pages;
            if (firstPage < 0 || numPages < 0)
                throw new ArgumentOutOfRangeException(nameof(firstPage), $"KVM_CLEAR_DIRTY_LOG: first_page ({firstPage}) and num_pages ({numPages}) must not be negative (they are unsigned in the kernel)");
            if (firstPage % 64 != 0)
                throw new ArgumentException(
                    $"KVM_CLEAR_DIRTY_LOG: first_page {firstPage} is not a multiple of 64 (the kernel would return EINVAL); use {firstPage / 64 * 64}", nameof(firstPage));
            CheckLogging(slot, "KVM_CLEAR_DIRTY_LOG");
            if (firstPage >= n || numPages > n - firstPage)
                throw new ArgumentOutOfRangeException(nameof(numPages),
                    $"KVM_CLEAR_DIRTY_LOG: pages [{firstPage}, {firstPage + numPages}) are outside slot {slot.Id}'s {n} pages " +
                    "(first_page must be below npages and the range inside the slot; the kernel would return EINVAL)");
            if (numPages % 64 != 0 && firstPage + numPages != n)
                throw new ArgumentException(
                    $"KVM_CLEAR_DIRTY_LOG: num_pages {numPages} is not a multiple of 64 and the range [{firstPage}, {firstPage + numPages}) does not end at the slot's end ({n}); " +
                    "num_pages may only be unaligned for the last chunk of a slot (the kernel would return EINVAL)", nameof(numPages));
            if (mask is not null && mask.Pages != n)
                throw new ArgumentException($"the mask has {mask.Pages} pages but slot {slot.Id} has {n}; pass a bitmap of the whole slot", nameof(mask));
            if (numPages == 0) return;
            ClearDirtyLogChecked(slot, firstPage, numPages, mask);
        }
        finally
        {
            call.Exit();
        }
    }

    void ClearDirtyLogChecked(MemSlot slot, long firstPage, long numPages, DirtyBitmap? mask)
    {
        var words = DirtyBitmap.WordsFor(numPages);
        ReadOnlySpan<ulong> m;
        if (mask is not null) m = mask.Words.AsSpan((int)(firstPage >> 6), words);
        else
        {
            var all = new ulong[words];
            Array.Fill(all, ulong.MaxValue);
            if ((numPages & 63) != 0) all[^1] = (1UL << (int)(numPages & 63)) - 1;
            m = all;
        }
        ClearDirtyLogCore(slot, firstPage, numPages, m);
    }

    void CheckNoRing(string ioctl)
    {
        if (DirtyRing is not null)
            throw new InvalidOperationException($"{ioctl}: this VM tracks dirty pages with the dirty ring (the kernel returns ENXIO); use vm.DirtyRing.Harvest() and Reset()");
    }

    static void CheckLogging(MemSlot slot, string ioctl)
    {
        if (!slot.LogDirtyPages)
            throw new InvalidOperationException($"{ioctl}: slot {slot.Id} is not logging dirty pages (it has no dirty_bitmap; the kernel returns ENOENT); set LogDirtyPages = true first");
    }

    void CheckOwned(MemSlot slot)
    {
        ArgumentNullException.ThrowIfNull(slot);
        if (slot.Vm != this) throw new ArgumentException($"{slot} belongs to another VM", nameof(slot));
        if (slot.Removed) throw new InvalidOperationException($"memslot {slot.Id} was removed from this VM");
    }

    internal void HarvestDirtyRingInternal(int vcpu, List<DirtyGfn> into) => HarvestDirtyRingCore(vcpu, into);

    internal long ResetDirtyRingsInternal() => ResetDirtyRingsCore();

    /// <summary>A vCPU exited with KVM_EXIT_DIRTY_RING_FULL: harvest every ring into the backlog and reset, then the vCPU may resume.</summary>
    private protected void OnDirtyRingFull(int vcpu)
        => (DirtyRing ?? throw new InvalidOperationException($"vCPU {vcpu} reported a full dirty ring but the ring is not enabled")).OnFull();

    // ---- workloads ------------------------------------------------------------------------------

    /// <summary>Checks <paramref name="workload"/> against this VM and resolves its range and per-vCPU slices.</summary>
    public WorkloadPlan Plan(Workload workload)
    {
        ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(workload);
        var w = workload;
        if (w.Stride <= 0 || w.Stride % 8 != 0)
            throw new ArgumentException($"stride must be a positive multiple of 8 bytes (accesses are 8 bytes); got {w.Stride}", nameof(workload));
        if (w.Offset < 0 || w.Offset % 8 != 0)
            throw new ArgumentException($"offset must be a non-negative multiple of 8; got {w.Offset}", nameof(workload));
        if (w.WritePercent is < 0 or > 100)
            throw new ArgumentException($"write percentage must be 0 … 100; got {w.WritePercent}", nameof(workload));
        if (w.Passes is < 1 or > Workload.MaxPasses)
            throw new ArgumentException($"passes must be 1 … {Workload.MaxPasses:N0} (each pass's time is recorded per vCPU); got {w.Passes:N0}. " +
                "For an open-ended run, use many passes and cancel it", nameof(workload));
        foreach (var a in w.EffectiveAccesses)
        {
            if (a.Offset < 0 || a.Offset % 8 != 0 || a.Step < 0 || a.Step % 8 != 0 || a.Count < 1)
                throw new ArgumentException($"{a}: offset and step must be non-negative multiples of 8 and count at least 1", nameof(workload));
            // Int128: huge offsets or steps must not wrap around into a small, "valid" end.
            var end = (Int128)w.Offset + a.Offset + (Int128)(a.Count - 1) * a.Step + 8;
            if (end > w.Stride)
                throw new ArgumentException($"{a} with offset {w.Offset} reaches byte {end} of a {w.Stride}-byte stride; accesses must stay inside their stride", nameof(workload));
        }

        ulong gpa;
        long length;
        if (w.Gpa is { } g)
        {
            var first = FindSlotAt(g) ?? throw new ArgumentOutOfRangeException(nameof(workload),
                $"workload range starts at 0x{g:x}, outside guest memory; memslots: {string.Join("; ", SlotsSnapshot)}");
            gpa = g;
            length = w.Length ?? (long)(first.EndGpa - g);
        }
        else
        {
            var s = Slot(w.Slot);
            gpa = s.Gpa;
            length = w.Length ?? s.Size.Bytes;
        }
        if (length < w.Stride)
            throw new ArgumentException($"workload range length {length} must hold at least one stride of {w.Stride} bytes", nameof(workload));
        if (FindSlotAt(gpa) is { IsSystem: true })
            throw new ArgumentException(
                $"workload range starts at 0x{gpa:x}, inside system slot 0, which holds the backend's code, stacks and page tables; use the test slot or another memslot", nameof(workload));
        var covered = new List<MemSlot>();
        for (ulong at = gpa; at < gpa + (ulong)length;)
        {
            var s = FindSlotAt(at) ?? throw new ArgumentOutOfRangeException(nameof(workload),
                $"workload range [0x{gpa:x}, 0x{gpa + (ulong)length:x}) is not all guest memory: nothing at 0x{at:x}; memslots: {string.Join("; ", SlotsSnapshot)}");
            covered.Add(s);
            at = s.EndGpa;
        }
        return new WorkloadPlan(w, Vcpus, gpa, length, covered);
    }

    /// <summary>
    /// Runs <paramref name="workload"/> on all vCPUs and waits for it. With <see cref="Workload.SyncEachPass"/>,
    /// <paramref name="afterPass"/>(pass) runs on this thread after each pass while every vCPU waits at the sync point
    /// (e.g. to get/clear the dirty log between dirty_log_perf_test iterations); without it there is no sync point
    /// and <paramref name="afterPass"/> is not called (on either backend). Only one workload (or, on KVM, raw-assembly
    /// program) runs on a VM at a time.
    /// </summary>
    public WorkloadResult Run(Workload workload, Action<int>? afterPass = null, CancellationToken cancellation = default)
    {
        var plan = Plan(workload);
        return Exclusive(cancellation, token => RunCore(plan, afterPass, token));
    }

    /// <summary>
    /// Runs <paramref name="body"/> as the VM's one guest run: while it runs <see cref="IsRunning"/> is true, a second run
    /// is refused, memslots cannot be removed or resized, and <see cref="Dispose"/> waits for it. The token passed to
    /// <paramref name="body"/> fires on <paramref name="cancellation"/> or on dispose. Every way of running guest code
    /// (workloads, the KVM backend's raw assembly) goes through here.
    /// </summary>
    private protected T Exclusive<T>(CancellationToken cancellation, Func<CancellationToken, T> body)
    {
        ThrowIfDisposed();
        if (Interlocked.CompareExchange(ref running, 1, 0) != 0)
            throw new InvalidOperationException("a workload is already running on this VM; wait for it (or cancel it) first");
        try
        {
            // Dispose sets `disposed` before it looks at `running`; we set `running` before looking at `disposed`
            // (both interlocked), so either Dispose waits for this run or this run sees the VM disposed.
            ThrowIfDisposed();
            runThread = Environment.CurrentManagedThreadId;
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellation, disposeCts.Token);
            return body(linked.Token);
        }
        finally
        {
            runThread = 0;
            Volatile.Write(ref running, 0);
        }
    }

    public Task<WorkloadResult> RunAsync(Workload workload, Action<int>? afterPass = null, CancellationToken cancellation = default)
        => Task.Factory.StartNew(() => Run(workload, afterPass, cancellation), cancellation, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    // ---- backend hooks --------------------------------------------------------------------------

    /// <summary>KVM_SET_USER_MEMORY_REGION: create the slot, or change its flags (<paramref name="logDirtyPages"/> = KVM_MEM_LOG_DIRTY_PAGES).</summary>
    private protected abstract void SetMemoryRegion(MemSlot slot, bool logDirtyPages);

    /// <summary>KVM_SET_USER_MEMORY_REGION with memory_size 0.</summary>
    private protected abstract void DeleteMemoryRegion(MemSlot slot);

    /// <summary>KVM_GET_DIRTY_LOG into <paramref name="bitmap"/> (ceil(npages/64) words). Checked: slot logs, no ring.</summary>
    private protected abstract void GetDirtyLogCore(MemSlot slot, ulong[] bitmap);

    /// <summary>KVM_CLEAR_DIRTY_LOG; <paramref name="mask"/> bit 0 = <paramref name="firstPage"/>. Checked: alignment, range, slot logs.</summary>
    private protected abstract void ClearDirtyLogCore(MemSlot slot, long firstPage, long numPages, ReadOnlySpan<ulong> mask);

    /// <summary>Appends vCPU <paramref name="vcpu"/>'s dirty ring entries from the fetch index on and marks them harvested (flags = RESET).</summary>
    private protected abstract void HarvestDirtyRingCore(int vcpu, List<DirtyGfn> into);

    /// <summary>KVM_RESET_DIRTY_RINGS; returns the number of entries reset.</summary>
    private protected abstract long ResetDirtyRingsCore();

    /// <summary>Runs a checked plan; stops promptly (OperationCanceledException) when <paramref name="cancellation"/> fires.
    /// Calls <see cref="OnDirtyRingFull"/> on ring-full exits.</summary>
    private protected abstract WorkloadResult RunCore(WorkloadPlan plan, Action<int>? afterPass, CancellationToken cancellation);

    /// <summary>Whether the calling thread is one of the backend's vCPU threads (running a guest callback).</summary>
    private protected virtual bool IsGuestThread => false;

    /// <summary>Releases the backend's resources (fds, threads); also when called from inside a run, where it must stop
    /// the vCPUs so none touches guest memory afterwards. Slot memory is unmapped by the base class afterwards.</summary>
    private protected abstract void DisposeCore();

    // ---- lifetime -------------------------------------------------------------------------------

    internal void ThrowIfDisposed()
    {
        if (Volatile.Read(ref disposed) != 0)
            throw new ObjectDisposedException(null, $"this {Backend} VM has been disposed; create a new one with Vm.Create(...)");
    }

    void ThrowIfRunning(string what)
    {
        if (IsRunning) throw new InvalidOperationException($"cannot {what} while a workload is running on this VM");
    }

    public void Dispose()
    {
        var deviceError = devices.DisposeAll(); // first, while the VM still works: device threads stop before memory goes
        if (Interlocked.Exchange(ref disposed, 1) != 0) return;
        var slotsAtDispose = SlotsSnapshot;
        disposeCts.Cancel();
        // Wait for a running workload to notice — unless Dispose comes from inside the run (its afterPass callback, or a
        // guest callback on a vCPU thread), where the run cannot end before we return; DisposeCore stops it then.
        var spin = new SpinWait();
        var deadline = Environment.TickCount64 + 10_000;
        while (Volatile.Read(ref running) != 0 && runThread != Environment.CurrentManagedThreadId && !IsGuestThread &&
               Environment.TickCount64 < deadline)
            spin.SpinOnce();
        try
        {
            // No dirty-log ioctl may still be on its way to the fds DisposeCore closes.
            lock (slotLock) Retire(SlotsSnapshot);
            DisposeCore();
        }
        finally
        {
            lock (slotLock)
            {
                foreach (var s in slotsAtDispose) s.Mapping.Dispose();
                foreach (var s in SlotsSnapshot) s.Mapping.Dispose(); // none: slot changes re-check `disposed` under the lock
                Publish([]);
            }
            disposeCts.Dispose();
            GC.SuppressFinalize(this);
        }
        if (deviceError is not null) throw deviceError;
    }

    public override string ToString()
        => IsDisposed ? $"{Backend} VM: {Vcpus} vCPU(s), disposed" : $"{Backend} VM: {Vcpus} vCPU(s), {Memory.Size} in {SlotsSnapshot.Length} memslot(s), test slot {Options.Memory} {Options.Backing.Name()}";

    public virtual IRenderable ToRenderable()
    {
        if (IsDisposed) return new Text($"{Backend} VM, {Vcpus} vCPU(s): disposed (its memslots and memory are gone)");
        var t = new Table { Title = new TableTitle(Markup.Escape($"{Backend} VM, {Vcpus} vCPU(s)")) };
        t.AddColumn("slot").AddColumn("gpa").AddColumn("size").AddColumn("backing").AddColumn("flags");
        foreach (var s in Slots)
            t.AddRow(s.Id.ToString(), Markup.Escape($"[0x{s.Gpa:x}, 0x{s.EndGpa:x})"), s.Size.ToString(), s.Backing.Name(),
                s.LogDirtyPages ? "LOG_DIRTY_PAGES" : "");
        var dirty = ManualProtect ? (InitiallySet ? "manual protect, initially set" : "manual protect") : "legacy get";
        if (DirtyRing is { } r) dirty = $"ring {r.Entries} entries/vCPU";
        t.Caption = new TableTitle(Markup.Escape($"dirty log: {dirty}; guest phys bits {GuestPhysBits}"));
        return devices.Render(t);
    }
}
