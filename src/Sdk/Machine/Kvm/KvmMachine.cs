using System.Diagnostics;
using System.Runtime.CompilerServices;
using VirtLab.Sdk.Native;

[assembly: InternalsVisibleTo("VirtLab.Sdk.Tests")]

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>What the host does when the guest calls it; run on the calling vCPU's thread.</summary>
internal sealed class GuestCallbacks
{
    /// <summary>GUEST_SYNC(pass) on a vCPU; may block (e.g. a barrier across vCPUs) and honour the token.</summary>
    public Action<int, ulong, CancellationToken>? OnSync;
    /// <summary>The print ucall; without a handler the text goes to <see cref="RunLog"/>.</summary>
    public Action<int, string>? OnPrint;
    /// <summary>The vCPU signalled done (or halted).</summary>
    public Action<int>? OnDone;
}

/// <summary>
/// The raw KVM VM: the VM fd, the system memslot (GDT, page tables, code, stacks) and the user memslots the
/// Machine layer registers, the dirty log and ring, the vCPUs, and (in KvmMachine.Run.cs) the run loop.
/// Backend-neutral policy (slot bookkeeping, validation, bitmaps) lives in the Vm layer above; the host limits
/// (vCPUs, ring size, system slot size) are checked once, in <see cref="KvmVm.Build"/>, and only asserted here.
/// </summary>
internal sealed partial class KvmMachine : IDisposable
{
    private readonly record struct Region(uint Slot, uint Flags, ulong Gpa, ulong Size, nint Hva);

    public KvmSystem System { get; }
    public uint SystemSlot { get; }
    public int VcpuCount { get; }
    public int DirtyRingBytes { get; private set; }
    /// <summary>Guest MAXPHYADDR as KVM_GET_SUPPORTED_CPUID reports it (CPUID 0x80000008).</summary>
    public int GuestPhysBits { get; }

    private readonly KvmDevice _kvm;
    private readonly KvmVmFd _vm;
    private nint _sysHost;
    private SystemLayout? _layout;
    private KvmPageTables? _tables;
    private bool _use1G;
    private readonly byte[] _cpuid;
    private readonly Dictionary<uint, Region> _regions = new();
    private KvmVcpu[]? _vcpus;
    private int _layoutGeneration, _builtGeneration = -1;
    private KvmGuestLayout _guestLayout = KvmGuestLayout.Empty;
    private ulong _cr3;
    private readonly object _runLock = new();
    private readonly CancellationTokenSource _disposeCts = new();
    private volatile bool _disposed;

    /// <summary>
    /// A VM with <paramref name="vcpus"/> vCPUs (created lazily, so a dirty ring can still be enabled). The Machine
    /// layer then registers system slot <paramref name="systemSlot"/> through <see cref="SetUserMemoryRegion"/>.
    /// </summary>
    public KvmMachine(int vcpus, uint systemSlot = 0)
    {
        System = KvmSystem.Probe();
        Debug.Assert(System.Usable, "KvmBackend.IsUsable is checked before a KVM VM is built");
        Debug.Assert(vcpus >= 1 && vcpus <= System.MaxVcpus && vcpus <= SystemLayout.MaxRecords, "KvmVm.Build checks the vCPU count");
        VcpuCount = vcpus;
        SystemSlot = systemSlot;

        _kvm = KvmDevice.Open();
        try
        {
            _cpuid = KvmCpuid.Supported(_kvm);
            GuestPhysBits = KvmCpuid.PhysAddrBits(_cpuid);
            _vm = _kvm.CreateVm();
        }
        catch
        {
            _kvm.Dispose();
            throw;
        }
    }

    /// <summary>Size of the system slot (0 until it is registered).</summary>
    public ulong SystemSlotSize => _layout?.Size ?? 0;

    private void AttachSystemSlot(nint host, ulong size, uint flags)
    {
        var layout = new SystemLayout(size, VcpuCount);
        _sysHost = host;
        _layout = layout;
        // Safe because host maps the whole slot (size bytes) for the VM's lifetime, and the tables stay inside layout.
        unsafe { _tables = new KvmPageTables((byte*)host, layout) { Use1GPages = _use1G }; }
        _tables.WriteGdt();
        _vm.SetUserMemoryRegion(SystemSlot, flags, 0, size, host);
        _layoutGeneration++;
    }

    private SystemLayout Layout => _layout ?? throw new InvalidOperationException($"system memslot {SystemSlot} has not been registered yet");

    /// <summary>The VM fd's number (display and inspection).</summary>
    public int VmFd => _vm.Number;

    /// <summary>The VM fd and its typed ioctls, e.g. for the raw-ioctl benchmark loops (check <see cref="ThrowIfDisposed"/> first).</summary>
    internal KvmVmFd VmFdHandle => _vm;

    internal IReadOnlyList<KvmVcpu> Vcpus => EnsureVcpus();

    /// <summary>Whether guest code has run on this VM (through <see cref="Run"/> or a raw benchmark run).</summary>
    internal bool HasRun { get; set; }

    /// <summary>CR3 of the page tables built last (<see cref="PrepareLayout"/>), for a raw run outside <see cref="Run"/>.</summary>
    internal ulong Cr3 => _cr3;

    /// <summary>Copies a guest program into the code area, as <see cref="Run"/> does (for a raw run outside it).</summary>
    internal void LoadCode(ReadOnlySpan<byte> code)
    {
        ThrowIfDisposed();
        _ = Layout;
        if ((ulong)code.Length > SystemLayout.CodeSize)
            throw new ArgumentException($"guest program is {code.Length} bytes; the code area holds {SystemLayout.CodeSize}");
        // Safe because the code area [CodeGpa, CodeGpa + CodeSize) lies in the registered system slot and the length is checked above.
        unsafe { code.CopyTo(new Span<byte>((byte*)_sysHost + SystemLayout.CodeGpa, code.Length)); }
    }
    internal byte[] Cpuid => _cpuid;

    public void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>Map 1 GiB guest pages where gpa/gva/size allow (needs PDPE1GB in the guest CPUID).</summary>
    public bool Use1GPages
    {
        get => _use1G;
        set
        {
            if (value && !KvmCpuid.Has1GPages(_cpuid)) throw new NotSupportedException("this host's KVM does not offer PDPE1GB (1 GiB guest pages)");
            if (_use1G == value) return;
            _use1G = value;
            if (_tables != null) _tables.Use1GPages = value;
            _layoutGeneration++;
        }
    }

    // ---------------------------------------------------------------- memslots

    /// <summary>KVM_SET_USER_MEMORY_REGION: create a slot, or re-issue it with new flags (toggles LOG_DIRTY_PAGES).</summary>
    public void SetUserMemoryRegion(uint slot, uint flags, ulong gpa, ulong size, nint hva)
    {
        ThrowIfDisposed();
        if (slot == SystemSlot)
        {
            if (_layout == null) { AttachSystemSlot(hva, size, flags); return; }
            if (gpa != 0 || size != _layout.Size || hva != _sysHost)
                throw new InvalidOperationException($"system memslot {SystemSlot} cannot be moved or resized");
            _vm.SetUserMemoryRegion(slot, flags, 0, size, hva);
            return;
        }
        if (size == 0) { DeleteUserMemoryRegion(slot); return; }
        _vm.SetUserMemoryRegion(slot, flags, gpa, size, hva);
        lock (_regions)
        {
            if (!_regions.TryGetValue(slot, out var old) || old.Gpa != gpa || old.Size != size) _layoutGeneration++;
            _regions[slot] = new Region(slot, flags, gpa, size, hva);
        }
    }

    /// <summary>Delete a slot: KVM_SET_USER_MEMORY_REGION with memory_size 0.</summary>
    public void DeleteUserMemoryRegion(uint slot)
    {
        ThrowIfDisposed();
        if (slot == SystemSlot) throw new InvalidOperationException($"system memslot {SystemSlot} cannot be deleted while the VM lives");
        Region r;
        lock (_regions)
        {
            if (!_regions.Remove(slot, out r)) return;
            _layoutGeneration++;
        }
        _vm.SetUserMemoryRegion(slot, 0, r.Gpa, 0, 0);
    }

    // ---------------------------------------------------------------- dirty logging

    /// <summary>KVM_GET_DIRTY_LOG into a caller bitmap of ceil(pages/64) words.</summary>
    public unsafe void GetDirtyLog(uint slot, ulong* bitmap)
    {
        ThrowIfDisposed();
        _vm.GetDirtyLog(slot, bitmap);
    }

    /// <summary>KVM_CLEAR_DIRTY_LOG for [firstPage, firstPage+numPages) with bits taken from bitmap (bit 0 = firstPage).</summary>
    public unsafe void ClearDirtyLog(uint slot, ulong firstPage, uint numPages, ulong* bitmap)
    {
        ThrowIfDisposed();
        _vm.ClearDirtyLog(slot, firstPage, numPages, bitmap);
    }

    /// <summary>KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) with MANUAL_PROTECT_ENABLE [| INITIALLY_SET].</summary>
    public void EnableManualProtect(bool initiallySet)
    {
        ulong flags = KvmConst.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (initiallySet ? KvmConst.KVM_DIRTY_LOG_INITIALLY_SET : 0);
        Debug.Assert(((ulong)System.Cap(KvmCap.MANUAL_DIRTY_LOG_PROTECT2) & flags) == flags, "KvmVm.Build checks the host's manual-protect flags");
        _vm.EnableCap(KvmCap.MANUAL_DIRTY_LOG_PROTECT2, flags);
    }

    /// <summary>Enable the per-vCPU dirty ring (bytes, a power of two within the host's limit); only before vCPUs exist.</summary>
    public void EnableDirtyRing(int bytes)
    {
        ThrowIfDisposed();
        Debug.Assert(bytes >= 4096 && (bytes & (bytes - 1)) == 0 && bytes <= System.DirtyRingMaxBytes, "VmOptions.Validate and KvmVm.Build check the ring size");
        if (_vcpus != null) throw new InvalidOperationException("the dirty ring must be enabled before the vCPUs are created (KVM returns EINVAL afterwards)");
        // ACQ_REL is the same ring with the documented memory ordering; prefer it where KVM offers it.
        int cap = System.Cap(KvmCap.DIRTY_LOG_RING_ACQ_REL) > 0 ? KvmCap.DIRTY_LOG_RING_ACQ_REL : KvmCap.DIRTY_LOG_RING;
        _vm.EnableCap(cap, (ulong)bytes);
        DirtyRingBytes = bytes;
    }

    /// <summary>Collect one vCPU's published dirty-ring entries (marking them RESET); returns how many.
    /// The pages stay unprotected until <see cref="ResetDirtyRings"/>.</summary>
    public int HarvestDirtyRing(int vcpu, Action<uint, ulong> sink)
    {
        if (DirtyRingBytes == 0) throw new InvalidOperationException("the dirty ring is not enabled on this VM");
        if (_vcpus == null) return 0;
        return _vcpus[vcpu].Ring!.Harvest(sink);
    }

    /// <summary>Collect one vCPU's published dirty-ring entries into <paramref name="into"/> in one append; returns how many.</summary>
    public int HarvestDirtyRing(int vcpu, List<DirtyGfn> into)
    {
        if (DirtyRingBytes == 0) throw new InvalidOperationException("the dirty ring is not enabled on this VM");
        if (_vcpus == null) return 0;
        return _vcpus[vcpu].Ring!.Harvest(into);
    }

    /// <summary>KVM_RESET_DIRTY_RINGS: re-protect harvested pages and recycle their entries; returns the count KVM reset.</summary>
    public int ResetDirtyRings()
    {
        if (DirtyRingBytes == 0) throw new InvalidOperationException("the dirty ring is not enabled on this VM");
        return _vm.ResetDirtyRings();
    }

    /// <summary>
    /// Serves KVM_EXIT_DIRTY_RING_FULL on the vCPU's thread; it must harvest and reset before returning so the
    /// vCPU can continue. Set before a run when a ring is enabled (the Vm layer's ring does).
    /// </summary>
    public Action<int>? OnDirtyRingFull { get; set; }

    private long _ringFullExits;

    /// <summary>KVM_EXIT_DIRTY_RING_FULL exits served so far.</summary>
    public long DirtyRingFullExits => Interlocked.Read(ref _ringFullExits);

    private void OnRingFull(KvmVcpu vcpu)
    {
        Interlocked.Increment(ref _ringFullExits);
        (OnDirtyRingFull ?? throw new InvalidOperationException("KVM_EXIT_DIRTY_RING_FULL with no handler: set OnDirtyRingFull before running with a dirty ring"))(vcpu.Index);
    }

    // ---------------------------------------------------------------- vCPUs

    private KvmVcpu[] EnsureVcpus()
    {
        ThrowIfDisposed();
        if (_vcpus != null) return _vcpus;
        var list = new List<KvmVcpu>();
        try
        {
            for (int i = 0; i < VcpuCount; i++)
            {
                var v = new KvmVcpu(_vm, i, System.VcpuMmapSize, DirtyRingBytes);
                list.Add(v);
                v.SetCpuid2(_cpuid);
            }
        }
        catch
        {
            foreach (var v in list) v.Dispose();
            throw;
        }
        return _vcpus = list.ToArray();
    }

    /// <summary>Create the vCPUs now (they are otherwise created at the first run, so a ring can still be enabled).</summary>
    public void CreateVcpus() => EnsureVcpus();

    // ---------------------------------------------------------------- guest layout

    /// <summary>Guest-virtual address of a guest-physical address in the system slot or a user memslot (as of the last build).</summary>
    public ulong GvaOf(ulong gpa) => gpa < SystemSlotSize ? gpa : _guestLayout.GvaOf(gpa);

    /// <summary>How user memory appears to guest code: gpa range → gva base.</summary>
    public IEnumerable<(ulong Gpa, ulong End, ulong Gva)> GuestMappings => _guestLayout.Runs.Select(r => (r.Start, r.End, r.Gva));

    /// <summary>Whether <see cref="GuestMappings"/> matches the current memslots (false before the first run and after a slot change).</summary>
    public bool GuestMappingsCurrent => Volatile.Read(ref _builtGeneration) == Volatile.Read(ref _layoutGeneration);

    /// <summary>Rebuild page tables when the slot layout changed; returns true when CR3 changed.</summary>
    private bool PreparePageTables()
    {
        if (_builtGeneration == _layoutGeneration) return false;
        List<(ulong, ulong)> slots;
        lock (_regions) slots = _regions.Values.Select(r => (r.Gpa, r.Size)).ToList();
        var layout = KvmGuestLayout.Plan(Layout.Size, slots);
        var tables = _tables!;
        if (KvmPageTables.PagesNeeded(layout.Mappings) > tables.FreePages)
        {
            // Pool exhausted: re-create the system slot so KVM zaps shadow pages of the old tables, then reuse the pool.
            _vm.SetUserMemoryRegion(SystemSlot, 0, 0, 0, 0);
            _vm.SetUserMemoryRegion(SystemSlot, 0, 0, Layout.Size, _sysHost);
            tables.ResetPool();
        }
        _cr3 = tables.Build(layout.Mappings);
        _guestLayout = layout;
        _builtGeneration = _layoutGeneration;
        return true;
    }

    public void PrepareLayout()
    {
        ThrowIfDisposed();
        _ = Layout;
        // Never rebuild under a running guest (a pool reset re-creates slot 0); GvaOf then uses the last build.
        // The lock is reentrant: from inside a run (an after-pass or guest callback on the running thread) don't rebuild either.
        if (Monitor.IsEntered(_runLock) || !Monitor.TryEnter(_runLock)) return;
        try { PreparePageTables(); }
        finally { Monitor.Exit(_runLock); }
    }

    /// <summary>Host pointer for [gpa, gpa+len) if one memslot (system or user) holds all of it (valid while that slot is).</summary>
    public unsafe byte* HostPointer(ulong gpa, ulong len)
    {
        // Written so nothing wraps: gpa comes from guest registers and may be anything.
        if (_layout != null && len <= _layout.Size && gpa <= _layout.Size - len) return (byte*)_sysHost + gpa;
        lock (_regions)
            foreach (var r in _regions.Values)
                if (gpa >= r.Gpa && len <= r.Size && gpa - r.Gpa <= r.Size - len) return (byte*)r.Hva + (gpa - r.Gpa);
        return null;
    }

    /// <summary>Host pointer into the system slot (valid while the VM is).</summary>
    public unsafe byte* SystemHost(ulong gpa) => (byte*)_sysHost + gpa;

    // ---------------------------------------------------------------- binary stats

    private readonly List<KvmStats> _stats = new();
    private KvmStats? _vmStats;

    /// <summary>The VM's binary stats fd (opened once, closed with the VM).</summary>
    public KvmStats VmStats
    {
        get
        {
            ThrowIfDisposed();
            if (_vmStats != null) return _vmStats;
            _vmStats = new KvmStats(_vm.Handle, "VM");
            lock (_stats) _stats.Add(_vmStats);
            return _vmStats;
        }
    }

    private KvmStats?[]? _vcpuStats;

    /// <summary>A vCPU's binary stats fd (opened once, closed with the VM).</summary>
    public KvmStats VcpuStats(int index)
    {
        var vcpus = EnsureVcpus();
        if ((uint)index >= (uint)vcpus.Length) throw new ArgumentOutOfRangeException(nameof(index), index, $"the VM has {vcpus.Length} vCPUs");
        _vcpuStats ??= new KvmStats?[vcpus.Length];
        if (_vcpuStats[index] is { } s) return s;
        s = new KvmStats(vcpus[index].Fd, $"vCPU {index}");
        lock (_stats) _stats.Add(s);
        return _vcpuStats[index] = s;
    }

    // ---------------------------------------------------------------- dispose

    private volatile Thread[]? _runThreads;
    private KvmVcpu? _deferredVcpu;

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        try { _disposeCts.Cancel(); } catch (ObjectDisposedException) { }
        if (_runThreads is { } threads)
        {
            // Disposed from inside a run — an after-pass callback on the caller's thread, or a guest callback on a
            // vCPU thread. Stop the vCPUs and wait for them here, so nothing touches kvm_run or guest memory after
            // this returns (the Machine layer unmaps the slots next). A vCPU thread cannot wait for itself: its
            // vCPU is released by the Run frame once that thread has left the loop.
            foreach (var v in _vcpus ?? []) v.RequestStop();
            foreach (var t in threads)
            {
                if (t == Thread.CurrentThread) continue;
                // A vCPU loop on a caller's thread (RunOnCallerThread): wait for the loop, not for that thread's end.
                if (t == _callerLoopThread && _callerLoopDone is { } done)
                {
                    try { done.Wait(); } catch (ObjectDisposedException) { } // the loop ended and its event is gone
                }
                else t.Join();
            }
            if (_threadVcpu is { } self && Array.IndexOf(_vcpus ?? [], self) >= 0) _deferredVcpu = self;
            DisposeCore();
            return;
        }
        // Otherwise wait for a run starting or ending on another thread before the fds and mappings go away.
        bool locked = Monitor.TryEnter(_runLock, TimeSpan.FromSeconds(10));
        try { DisposeCore(); }
        finally { if (locked) Monitor.Exit(_runLock); }
    }

    private void DisposeCore()
    {
        lock (_stats) { foreach (var st in _stats) st.Dispose(); _stats.Clear(); }
        if (_vcpus != null) foreach (var v in _vcpus) if (v != _deferredVcpu) v.Dispose();
        _vcpus = null;
        _vm?.Dispose(); // the VM lives on in the kernel until its vCPU fds and mappings are gone too
        _kvm?.Dispose();
        _sysHost = 0;
    }
}
