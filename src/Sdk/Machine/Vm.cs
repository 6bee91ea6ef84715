using System.Collections.Immutable;
using VirtLab.Sdk.Measure;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// A virtual machine: memslots over host memory, vCPUs that run declarative <see cref="Workload"/>s, and KVM's
/// dirty-logging primitives. <see cref="Create(VmOptions)"/> picks the backend (real KVM or the simulator); this base
/// class owns the slots, guest memory, bounds checks and argument validation, and calls the backend only with
/// requests the kernel would accept.
/// </summary>
public abstract partial class Vm : IDisposable
{
    readonly object _slotLock = new();
    ImmutableArray<MemSlot> _slots = []; // sorted by gpa; replaced, never mutated, so readers need no lock
    readonly CancellationTokenSource _disposeCts = new();
    readonly List<HostMapping> _orphans = []; // retired slots whose kernel memslot could not be deleted
    int _disposed;
    int _running;
    int _runThread; // managed thread id of the caller of Run, while it runs
    readonly VmDeviceList _devices = new();
    GuestPhysicalSpace? _physicalSpace;

    private protected Vm(VmOptions options)
    {
        Options = options;
        Vcpus = options.Vcpus;
        GuestPhysBits = options.GuestPhysBits ?? HostInfo.PhysAddressBits;
        Memory = new GuestMemory(this);
        if (options.DirtyRingBytes.Bytes > 0) DirtyRing = new DirtyRing(this, (int)options.DirtyRingBytes.Bytes);
    }

    // ---- creation -------------------------------------------------------------------------------

    /// <summary>A VM with a test slot of <paramref name="memory"/> bytes (slot 1) and a small system slot 0.</summary>
    public static Vm Create(Size memory, int vcpus = 1, Backing backing = Backing.Anonymous, Backend backend = Backend.Auto,
        ulong? testSlotGpa = null, bool manualProtect = false, bool initiallySet = false, int dirtyRingBytes = 0)
        => Create(new VmOptions(memory)
        {
            Vcpus = vcpus, Backing = backing, Backend = backend, TestSlotGpa = testSlotGpa,
            ManualProtect = manualProtect, InitiallySet = initiallySet, DirtyRingBytes = new Size(dirtyRingBytes),
        });

    /// <summary>Checks <paramref name="options"/> (<see cref="VmOptions.Validate"/>) and builds the VM on the backend they ask for.</summary>
    public static Vm Create(VmOptions options) => VmBackends.Create(options);

    /// <summary>Whether <see cref="Backend.Kvm"/> works here, and if not why. Setting the environment variable
    /// <c>VIRTLAB_DISABLE_KVM=1</c> makes it unusable (Auto then picks the simulator; KVM tests skip).</summary>
    public static bool IsKvmUsable(out string reason) => VmBackends.IsKvmUsable(out reason);

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

    /// <summary>The options the VM was created with.</summary>
    public VmOptions Options { get; }

    /// <summary>The backend the VM runs on (Kvm or Sim).</summary>
    public abstract Backend Backend { get; }

    /// <summary>Number of vCPUs.</summary>
    public int Vcpus { get; }

    /// <summary>The test slot's backing.</summary>
    public Backing Backing => Options.Backing;

    /// <summary>Guest memory, addressed by guest-physical address (host access).</summary>
    public GuestMemory Memory { get; }

    /// <summary>Guest physical address width; every slot ends at or below <see cref="MaxGpa"/>.</summary>
    public int GuestPhysBits { get; private set; }

    /// <summary>2^<see cref="GuestPhysBits"/>: the end of the guest-physical space.</summary>
    public ulong MaxGpa => 1UL << GuestPhysBits;

    /// <summary>KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE: GET_DIRTY_LOG does not re-protect; CLEAR_DIRTY_LOG does.</summary>
    public bool ManualProtect => Options.ManualProtect;

    /// <summary>KVM_DIRTY_LOG_INITIALLY_SET: a slot starts logging with every page dirty.</summary>
    public bool InitiallySet => Options.InitiallySet;

    /// <summary>The dirty rings, when <see cref="VmOptions.DirtyRingBytes"/> is set; else null.</summary>
    public DirtyRing? DirtyRing { get; }

    /// <summary>Most vCPUs this backend allows.</summary>
    public virtual int MaxVcpus => VmOptions.MaxVcpusDefault;

    /// <summary>Slot ids allowed are 0 … MaxMemslots − 1 (KVM_CAP_NR_MEMSLOTS).</summary>
    public virtual int MaxMemslots => 32764;

    /// <summary>Slots ordered by id.</summary>
    public IReadOnlyList<MemSlot> Slots => SlotsSnapshot.OrderBy(s => s.Id).ToArray();

    /// <summary>Slot 0: page tables and guest code.</summary>
    public MemSlot SystemSlot => Slot(0);

    /// <summary>Slot 1, the memory <see cref="VmOptions.Memory"/> asked for.</summary>
    public MemSlot TestSlot => Slot(1);

    /// <summary>Whether <see cref="Dispose"/> ran.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>Whether a workload is running now.</summary>
    public bool IsRunning => Volatile.Read(ref _running) != 0;

    internal ImmutableArray<MemSlot> SlotsSnapshot => _slots; // one reference inside: reads are atomic

    /// <summary>The slot with this id; throws <see cref="ArgumentException"/> naming the existing ones when there is none.</summary>
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

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)] // see GuestMemory.Resolve
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

    /// <summary>Names this VM in <see cref="SlotGuard"/> announcements (its fds and dirty-ring mappings).</summary>
    internal long Serial { get; } = SlotGuard.NewSerial();

    volatile bool _systemSlotWritten;

    /// <summary>Whether the host wrote into system slot 0 (through <see cref="GuestMemory.WithSystemSlotWrites"/>); a
    /// failing KVM run then names it as the likely cause.</summary>
    internal bool SystemSlotWritten => _systemSlotWritten;

    internal void OnSystemSlotWritten() => _systemSlotWritten = true;

    internal void ThrowIfDisposed()
    {
        if (Volatile.Read(ref _disposed) != 0)
            throw new ObjectDisposedException(null, $"this {Backend} VM has been disposed; create a new one with Vm.Create(...)");
    }

    void ThrowIfRunning(string what)
    {
        if (IsRunning) throw new InvalidOperationException($"cannot {what} while a workload is running on this VM");
    }

    /// <summary>Guest-physical memory as a device without an IOMMU sees it (translate + bounds, faults instead of exceptions).</summary>
    public GuestPhysicalSpace PhysicalSpace => _physicalSpace ?? Interlocked.CompareExchange(ref _physicalSpace, new(this), null) ?? _physicalSpace;

    /// <summary>Attached devices, in attach order.</summary>
    public IReadOnlyList<VmDevice> Devices => _devices.Snapshot;

    /// <summary>Attaches a device model (it is disposed with the VM, before guest memory goes away) and returns it.</summary>
    public T Attach<T>(T device) where T : VmDevice => _devices.Attach(this, device);

    /// <inheritdoc/>
    public void Dispose()
    {
        var deviceError = _devices.DisposeAll(); // first, while the VM still works: device threads stop before memory goes
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        var slotsAtDispose = SlotsSnapshot;
        _disposeCts.Cancel();
        // Wait for a running workload to notice — unless Dispose comes from inside the run (its afterPass callback, or a
        // guest callback on a vCPU thread), where the run cannot end before we return; DisposeCore stops it then.
        var spin = new SpinWait();
        var deadline = Environment.TickCount64 + 10_000;
        while (Volatile.Read(ref _running) != 0 && _runThread != Environment.CurrentManagedThreadId && !IsGuestThread &&
               Environment.TickCount64 < deadline)
            spin.SpinOnce();
        try
        {
            // No dirty-log ioctl may still be on its way to the fds DisposeCore closes.
            // Nor any guest-memory access or dirty-ring read (they announce the VM itself) still be using them.
            lock (_slotLock) Retire(SlotsSnapshot, vmToo: true);
            DisposeCore();
        }
        finally
        {
            lock (_slotLock)
            {
                foreach (var s in slotsAtDispose) s.Mapping.Dispose();
                foreach (var s in SlotsSnapshot) s.Mapping.Dispose(); // none: slot changes re-check `disposed` under the lock
                foreach (var m in _orphans) m.Dispose();
                Publish([]);
            }
            _disposeCts.Dispose();
            GC.SuppressFinalize(this);
        }
        if (deviceError is not null) throw deviceError;
    }

    /// <inheritdoc/>
    public override string ToString()
        => IsDisposed ? $"{Backend} VM: {Vcpus} vCPU(s), disposed" : $"{Backend} VM: {Vcpus} vCPU(s), {Memory.Size} in {SlotsSnapshot.Length} memslot(s), test slot {Options.Memory} {Options.Backing.Name()}";
}
