using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using System.Runtime.CompilerServices;
using System.Text;
using VirtLab.Sdk.Native;

[assembly: InternalsVisibleTo("VirtLab.Sdk.Tests")]

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>Guest→host calls of the VirtLab guest ABI (`out dx, eax` on port 0x1000, like the selftests' ucall).</summary>
public static class Ucall
{
    /// <summary>The I/O port guest code writes a ucall to (as the selftests' UCALL_PIO).</summary>
    public const ushort Port = 0x1000;
    /// <summary>Ucall numbers: the guest finished, reached a sync point, failed an assertion, printed.</summary>
    public const uint Done = 0, Sync = 1, Assert = 2, Print = 3;
    /// <summary>No-op exit: gives KVM a guest entry to service pending requests (e.g. a soft-full dirty ring).</summary>
    public const uint Yield = 4;
}

/// <summary>What the host does when the guest calls it; run on the calling vCPU's thread.</summary>
internal sealed class GuestCallbacks
{
    /// <summary>GUEST_SYNC(pass) on a vCPU; may block (e.g. a barrier across vCPUs) and honour the token.</summary>
    public Action<int, ulong, CancellationToken>? OnSync;
    public Action<int, string>? OnPrint;
    /// <summary>The vCPU signalled done (or halted).</summary>
    public Action<int>? OnDone;
}

/// <summary>
/// The raw KVM VM: /dev/kvm + VM fd, the system memslot (GDT, page tables, code, stacks), user memslots
/// registered by the Machine layer, vCPUs with their kvm_run and dirty rings, and the run loop.
/// Backend-neutral policy (slot bookkeeping, validation, bitmaps) lives in the Vm layer above.
/// </summary>
internal sealed unsafe class KvmMachine : IDisposable
{
    private readonly record struct Region(uint Slot, uint Flags, ulong Gpa, ulong Size, nint Hva);

    public KvmSystem System { get; }
    public uint SystemSlot { get; }
    public int VcpuCount { get; }
    public int DirtyRingBytes { get; private set; }
    public ulong ManualProtectFlags { get; private set; }
    /// <summary>Guest MAXPHYADDR as KVM_GET_SUPPORTED_CPUID reports it (CPUID 0x80000008).</summary>
    public int GuestPhysBits { get; }

    private readonly KvmFd _kvm;
    private readonly KvmFd _vm;
    private readonly int _vmFd; // valid while !_disposed; the hot dirty-log paths skip the SafeHandle
    private static readonly nuint GetDirtyLogRequest = KvmIoctl.KVM_GET_DIRTY_LOG, ClearDirtyLogRequest = KvmIoctl.KVM_CLEAR_DIRTY_LOG;
    private nint _sysHost;
    private nint _ownedHost;      // our own system-slot mapping (standalone use), unmapped on dispose
    private ulong _ownedSize;
    private SystemLayout? _layout;
    private KvmPageTables? _tables;
    private bool _use1G;
    private readonly byte[] _cpuid;
    private readonly Dictionary<uint, Region> _regions = new();
    private KvmVcpu[]? _vcpus;
    private int _layoutGeneration, _builtGeneration = -1;
    private ulong _cr3;
    private readonly object _runLock = new();
    private readonly CancellationTokenSource _disposeCts = new();
    private volatile bool _disposed;

    /// <summary>
    /// A VM with <paramref name="vcpus"/> vCPUs (created lazily, so a dirty ring can still be enabled).
    /// With <paramref name="ownSystemSlot"/> the machine allocates its own system slot; otherwise the Machine layer
    /// registers slot <paramref name="systemSlot"/> through <see cref="SetUserMemoryRegion"/>.
    /// </summary>
    public KvmMachine(int vcpus, bool ownSystemSlot = true, uint systemSlot = 0)
    {
        System = KvmSystem.Probe();
        if (!System.Usable) throw new InvalidOperationException("KVM is not usable: " + System.Reason);
        if (vcpus < 1) throw new ArgumentOutOfRangeException(nameof(vcpus), $"a VM needs at least one vCPU; got {vcpus}");
        if (vcpus > System.MaxVcpus)
            throw new ArgumentOutOfRangeException(nameof(vcpus), $"this host's KVM allows at most {System.MaxVcpus} vCPUs per VM (KVM_CAP_MAX_VCPUS); got {vcpus}");
        if (vcpus > SystemLayout.MaxRecords)
            throw new ArgumentOutOfRangeException(nameof(vcpus), $"the KVM backend supports at most {SystemLayout.MaxRecords} vCPUs; got {vcpus}");
        VcpuCount = vcpus;
        SystemSlot = systemSlot;

        _kvm = KvmFd.OpenDevKvm();
        try
        {
            _cpuid = KvmCpuid.Supported(_kvm);
            GuestPhysBits = KvmCpuid.PhysAddrBits(_cpuid);
            _vm = _kvm.IoctlFd(KvmIoctl.KVM_CREATE_VM, 0, "vm");
            _vmFd = _vm.Fd;
            if (ownSystemSlot)
            {
                ulong size = SystemLayout.AlignUp(SystemLayout.MinSize(vcpus) + (4ul << 20), 2ul << 20);
                nint host = Libc.MmapChecked(0, (long)size, Libc.PROT_READ | Libc.PROT_WRITE,
                    Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0, "allocating the KVM system memslot");
                _ownedHost = host;
                _ownedSize = size;
                AttachSystemSlot(host, size, 0);
            }
        }
        catch
        {
            Dispose();
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
        _tables = new KvmPageTables((byte*)host, layout) { Use1GPages = _use1G };
        _tables.WriteGdt();
        SetRegionRaw(SystemSlot, flags, 0, size, host);
        _layoutGeneration++;
    }

    private SystemLayout Layout => _layout ?? throw new InvalidOperationException($"system memslot {SystemSlot} has not been registered yet");

    public int VmFd => _vm.Fd;
    internal IReadOnlyList<KvmVcpu> Vcpus => EnsureVcpus();
    internal byte[] Cpuid => _cpuid;

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

    private void SetRegionRaw(uint slot, uint flags, ulong gpa, ulong size, nint hva)
    {
        var r = new kvm_userspace_memory_region { slot = slot, flags = flags, guest_phys_addr = gpa, memory_size = size, userspace_addr = (ulong)hva };
        _vm.Ioctl(KvmIoctl.KVM_SET_USER_MEMORY_REGION, &r, $"slot {slot} gpa 0x{gpa:x} size 0x{size:x} flags 0x{flags:x}");
    }

    /// <summary>KVM_SET_USER_MEMORY_REGION: create a slot, or re-issue it with new flags (toggles LOG_DIRTY_PAGES).</summary>
    public void SetUserMemoryRegion(uint slot, uint flags, ulong gpa, ulong size, nint hva)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (slot == SystemSlot)
        {
            if (_layout == null) { AttachSystemSlot(hva, size, flags); return; }
            if (gpa != 0 || size != _layout.Size || hva != _sysHost)
                throw new InvalidOperationException($"system memslot {SystemSlot} cannot be moved or resized");
            SetRegionRaw(slot, flags, 0, size, hva);
            return;
        }
        if (size == 0) { DeleteUserMemoryRegion(slot); return; }
        SetRegionRaw(slot, flags, gpa, size, hva);
        lock (_regions)
        {
            if (!_regions.TryGetValue(slot, out var old) || old.Gpa != gpa || old.Size != size) _layoutGeneration++;
            _regions[slot] = new Region(slot, flags, gpa, size, hva);
        }
    }

    /// <summary>Delete a slot: KVM_SET_USER_MEMORY_REGION with memory_size 0.</summary>
    public void DeleteUserMemoryRegion(uint slot)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (slot == SystemSlot) throw new InvalidOperationException($"system memslot {SystemSlot} cannot be deleted while the VM lives");
        Region r;
        lock (_regions)
        {
            if (!_regions.Remove(slot, out r)) return;
            _layoutGeneration++;
        }
        SetRegionRaw(slot, 0, r.Gpa, 0, 0);
    }

    // ---------------------------------------------------------------- dirty logging

    /// <summary>KVM_GET_DIRTY_LOG into a caller bitmap of ceil(pages/64) words.</summary>
    public void GetDirtyLog(uint slot, ulong* bitmap)
    {
        var log = new kvm_dirty_log { slot = slot, dirty_bitmap = (ulong)bitmap };
        // Hot path (benchmarked against the bare ioctl): cached fd and request, no formatting unless it fails.
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Libc.ioctl(_vmFd, GetDirtyLogRequest, &log) < 0) throw KvmException.Last("KVM_GET_DIRTY_LOG", $"slot {slot}");
    }

    /// <summary>KVM_CLEAR_DIRTY_LOG for [firstPage, firstPage+numPages) with bits taken from bitmap (bit 0 = firstPage).</summary>
    public void ClearDirtyLog(uint slot, ulong firstPage, uint numPages, ulong* bitmap)
    {
        var c = new kvm_clear_dirty_log { slot = slot, first_page = firstPage, num_pages = numPages, dirty_bitmap = (ulong)bitmap };
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (Libc.ioctl(_vmFd, ClearDirtyLogRequest, &c) < 0)
            throw KvmException.Last("KVM_CLEAR_DIRTY_LOG", $"slot {slot} first_page {firstPage} num_pages {numPages}");
    }

    /// <summary>KVM_ENABLE_CAP(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2): 0 disables; else MANUAL_PROTECT_ENABLE [| INITIALLY_SET].</summary>
    public void EnableManualProtect(bool enable, bool initiallySet)
    {
        int supported = System.Cap(KvmCap.MANUAL_DIRTY_LOG_PROTECT2);
        ulong flags = enable ? KvmConst.KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE | (initiallySet ? KvmConst.KVM_DIRTY_LOG_INITIALLY_SET : 0) : 0;
        if (((ulong)supported & flags) != flags)
            throw new BackendUnavailableException(Backend.Kvm, $"this host's KVM does not support manual dirty-log protection with flags 0x{flags:x} (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 reports 0x{supported:x}); use Backend.Sim or leave ManualProtect/InitiallySet off");
        EnableCap(KvmCap.MANUAL_DIRTY_LOG_PROTECT2, flags);
        ManualProtectFlags = flags;
    }

    public void EnableCap(int cap, ulong arg0)
    {
        var c = new kvm_enable_cap { cap = (uint)cap };
        c.args[0] = arg0;
        _vm.Ioctl(KvmIoctl.KVM_ENABLE_CAP, &c, $"{KvmCap.Name(cap)} args[0]=0x{arg0:x}");
    }

    /// <summary>Enable the per-vCPU dirty ring (bytes, a power of two); only before vCPUs exist.</summary>
    public void EnableDirtyRing(int bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int max = System.DirtyRingMaxBytes;
        if (max == 0) throw new NotSupportedException("KVM_CAP_DIRTY_LOG_RING is not supported by this host's KVM");
        if (bytes < 4096 || (bytes & (bytes - 1)) != 0 || bytes > max)
            throw new ArgumentOutOfRangeException(nameof(bytes), bytes, $"dirty ring size must be a power of two between 4096 and {max} bytes (KVM_CAP_DIRTY_LOG_RING)");
        if (_vcpus != null) throw new InvalidOperationException("the dirty ring must be enabled before the vCPUs are created (KVM returns EINVAL afterwards)");
        // ACQ_REL is the same ring with the documented memory ordering; prefer it where KVM offers it.
        int cap = System.Cap(KvmCap.DIRTY_LOG_RING_ACQ_REL) > 0 ? KvmCap.DIRTY_LOG_RING_ACQ_REL : KvmCap.DIRTY_LOG_RING;
        EnableCap(cap, (ulong)bytes);
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

    /// <summary>KVM_RESET_DIRTY_RINGS: re-protect harvested pages and recycle their entries; returns the count KVM reset.</summary>
    public int ResetDirtyRings()
    {
        if (DirtyRingBytes == 0) throw new InvalidOperationException("the dirty ring is not enabled on this VM");
        return _vm.Ioctl(KvmIoctl.KVM_RESET_DIRTY_RINGS);
    }

    /// <summary>Harvest every vCPU's ring, then reset. Returns entries harvested.</summary>
    public int HarvestDirtyRings(Action<uint, ulong> sink)
    {
        if (DirtyRingBytes == 0) throw new InvalidOperationException("the dirty ring is not enabled on this VM");
        if (_vcpus == null) return 0;
        int n = 0;
        for (int i = 0; i < _vcpus.Length; i++) n += HarvestDirtyRing(i, sink);
        ResetDirtyRings();
        return n;
    }

    /// <summary>
    /// Serves KVM_EXIT_DIRTY_RING_FULL on the vCPU's thread; it must harvest and reset before returning so the
    /// vCPU can continue. Default: move every ring's entries into a spill list returned by <see cref="DrainRingSpill"/>.
    /// </summary>
    public Action<int>? OnDirtyRingFull { get; set; }

    private readonly List<(uint Slot, ulong Offset)> _ringFullSpill = new();

    public int DrainRingSpill(Action<uint, ulong> sink)
    {
        lock (_ringFullSpill)
        {
            foreach (var (s, o) in _ringFullSpill) sink(s, o);
            int n = _ringFullSpill.Count;
            _ringFullSpill.Clear();
            return n;
        }
    }

    private long _ringFullExits;

    /// <summary>KVM_EXIT_DIRTY_RING_FULL exits served so far.</summary>
    public long DirtyRingFullExits => Interlocked.Read(ref _ringFullExits);

    private void OnRingFull(KvmVcpu vcpu)
    {
        Interlocked.Increment(ref _ringFullExits);
        if (OnDirtyRingFull is { } h) { h(vcpu.Index); return; }
        lock (_ringFullSpill)
        {
            for (int i = 0; i < _vcpus!.Length; i++) HarvestDirtyRing(i, (s, o) => _ringFullSpill.Add((s, o)));
            ResetDirtyRings();
        }
    }

    // ---------------------------------------------------------------- vCPUs and the run loop

    private KvmVcpu[] EnsureVcpus()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_vcpus != null) return _vcpus;
        var list = new List<KvmVcpu>();
        try
        {
            for (int i = 0; i < VcpuCount; i++)
            {
                var v = new KvmVcpu(_vm, i, System.VcpuMmapSize, DirtyRingBytes);
                list.Add(v);
                KvmCpuid.SetOn(v, _cpuid);
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

    private IReadOnlyList<GuestMapping> Mappings()
    {
        // Gpa-adjacent memslots form one run that keeps a single gpa→gva offset, so a workload spanning adjacent
        // slots stays linear. Runs below 64 TiB are identity-mapped; the others (e.g. the test slot at the top of a
        // 52-bit guest-physical space, beyond the 47-bit canonical half) get windows from 64 TiB up, 1 GiB aligned
        // relative to their gpa so 2 MiB / 1 GiB guest pages still fit.
        const ulong identityLimit = 1ul << 46, canonical = 1ul << 47, align = 1ul << 30;
        var maps = new List<GuestMapping> { new(0, 0, Layout.Size) };
        var runs = new List<GvaRun>();
        ulong window = identityLimit;
        List<Region> ordered;
        lock (_regions) ordered = _regions.Values.OrderBy(r => r.Gpa).ToList();
        for (int i = 0; i < ordered.Count;)
        {
            ulong start = ordered[i].Gpa, end = ordered[i].Gpa + ordered[i].Size;
            int j = i + 1;
            while (j < ordered.Count && ordered[j].Gpa == end) end += ordered[j++].Size;
            ulong delta = 0;
            if (end > identityLimit)
            {
                ulong gva = window + (start & (align - 1));
                delta = start - gva;
                window = (gva + (end - start) + align - 1) & ~(align - 1);
                if (window > canonical)
                    throw new NotSupportedException($"guest memory above 64 TiB of gpa exceeds the 64 TiB of guest-virtual windows (4-level paging)");
            }
            runs.Add(new GvaRun(start, end, delta));
            for (int k = i; k < j; k++) maps.Add(new(ordered[k].Gpa, ordered[k].Gpa - delta, ordered[k].Size));
            i = j;
        }
        _runs = runs;
        return maps;
    }

    private readonly record struct GvaRun(ulong Start, ulong End, ulong Delta);
    private List<GvaRun> _runs = new();

    /// <summary>Guest-virtual address of a guest-physical address in the system slot or a user memslot (as of the last build).</summary>
    public ulong GvaOf(ulong gpa)
    {
        if (gpa < SystemSlotSize) return gpa;
        foreach (var r in _runs)
            if (gpa >= r.Start && gpa < r.End) return gpa - r.Delta;
        throw new ArgumentOutOfRangeException(nameof(gpa), $"gpa 0x{gpa:x} is in no memslot the guest page tables map");
    }

    /// <summary>How user memory appears to guest code: gpa range → gva base.</summary>
    public IEnumerable<(ulong Gpa, ulong End, ulong Gva)> GuestMappings => _runs.Select(r => (r.Start, r.End, r.Start - r.Delta));

    /// <summary>Whether <see cref="GuestMappings"/> matches the current memslots (false before the first run and after a slot change).</summary>
    public bool GuestMappingsCurrent => Volatile.Read(ref _builtGeneration) == Volatile.Read(ref _layoutGeneration);

    /// <summary>Rebuild page tables when the slot layout changed; returns true when CR3 changed.</summary>
    private bool PreparePageTables()
    {
        if (_builtGeneration == _layoutGeneration) return false;
        var maps = Mappings();
        var tables = _tables!;
        if (KvmPageTables.PagesNeeded(maps) > tables.FreePages)
        {
            // Pool exhausted: re-create the system slot so KVM zaps shadow pages of the old tables, then reuse the pool.
            SetRegionRaw(SystemSlot, 0, 0, 0, 0);
            SetRegionRaw(SystemSlot, 0, 0, Layout.Size, _sysHost);
            tables.ResetPool();
        }
        _cr3 = tables.Build(maps);
        _builtGeneration = _layoutGeneration;
        return true;
    }

    public void PrepareLayout()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        _ = Layout;
        // Never rebuild under a running guest (a pool reset re-creates slot 0); GvaOf then uses the last build.
        // The lock is reentrant: from inside a run (an after-pass or guest callback on the running thread) don't rebuild either.
        if (Monitor.IsEntered(_runLock) || !Monitor.TryEnter(_runLock)) return;
        try { PreparePageTables(); }
        finally { Monitor.Exit(_runLock); }
    }

    /// <summary>
    /// Run one guest program on every vCPU (rdi = vCPU index, rsp = its stack, long mode) until each signals
    /// done, one fails, or the token fires. Each vCPU runs KVM_RUN on its own thread; <paramref name="onCaller"/>
    /// (if any) runs on the calling thread meanwhile, with a token that fires when a vCPU fails.
    /// </summary>
    public void Run(ReadOnlySpan<byte> code, ulong entryOffset, GuestCallbacks callbacks, CancellationToken token,
        Action<CancellationToken>? onCaller = null)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if ((ulong)code.Length > SystemLayout.CodeSize)
            throw new ArgumentException($"guest program is {code.Length} bytes; the code area holds {SystemLayout.CodeSize}");
        if (entryOffset >= (ulong)code.Length) throw new ArgumentOutOfRangeException(nameof(entryOffset));
        if (!Monitor.TryEnter(_runLock)) throw new InvalidOperationException("a guest program is already running on this VM");
        try
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var layout = Layout;
            var vcpus = EnsureVcpus();
            bool newCr3 = PreparePageTables();
            code.CopyTo(new Span<byte>((byte*)_sysHost + SystemLayout.CodeGpa, code.Length));
            foreach (var v in vcpus)
            {
                var s = v.GetSregs();
                if (newCr3 || s.cr3 != _cr3 || (s.efer & (1 << 10)) == 0)
                {
                    KvmPageTables.SetLongMode(ref s, _cr3);
                    v.SetSregs(s);
                }
                v.SetRegs(new kvm_regs { rip = SystemLayout.CodeGpa + entryOffset, rsp = SystemLayout.StackTop(v.Index), rdi = (ulong)v.Index, rflags = 0x2 });
            }

            using var failed = CancellationTokenSource.CreateLinkedTokenSource(token, _disposeCts.Token);
            var errors = new ConcurrentQueue<Exception>(); // in the order they happened
            var threads = new Thread[vcpus.Length];
            using var go = new ManualResetEventSlim(false);
            foreach (var v in vcpus)
            {
                threads[v.Index] = new Thread(() =>
                {
                    go.Wait(); // all threads exist before any guest code (and its callbacks) runs
                    try { RunLoop(v, callbacks, failed.Token); }
                    catch (Exception e)
                    {
                        errors.Enqueue(e);
                        try { failed.Cancel(); } catch (ObjectDisposedException) { }
                    }
                }, 256 * 1024) { IsBackground = true, Name = $"vcpu{v.Index}" };
            }
            // Cancellation (user token, dispose, or a failing sibling) kicks every vCPU out of KVM_RUN.
            using var reg = failed.Token.Register(() => { foreach (var v in vcpus) v.RequestStop(); });
            foreach (var t in threads) t.Start();
            _runThreads = threads;
            go.Set();
            Exception? callerError = null;
            try { onCaller?.Invoke(failed.Token); }
            catch (Exception e)
            {
                callerError = e;
                try { failed.Cancel(); } catch (ObjectDisposedException) { }
            }
            foreach (var t in threads) t.Join();

            // The first real failure is the cause; siblings stopped because of it (or failed the same way later).
            if (errors.FirstOrDefault(e => e is not OperationCanceledException) is { } cause)
                ExceptionDispatchInfo.Throw(cause);
            if (callerError is not null and not OperationCanceledException)
                ExceptionDispatchInfo.Throw(callerError);
            token.ThrowIfCancellationRequested();
            if (_disposeCts.IsCancellationRequested) throw new ObjectDisposedException(nameof(KvmMachine), "the VM was disposed while the guest ran");
            if (callerError != null) ExceptionDispatchInfo.Throw(callerError);
            if (errors.TryPeek(out var first)) ExceptionDispatchInfo.Throw(first);
        }
        finally
        {
            _runThreads = null;
            if (_deferredVcpu is { } d) { _deferredVcpu = null; d.Dispose(); } // disposed from its own thread
            Monitor.Exit(_runLock);
        }
    }

    [ThreadStatic] private static KvmVcpu? _threadVcpu;

    /// <summary>Whether the calling thread is one of this machine's vCPU threads (inside a guest callback).</summary>
    public bool IsVcpuThread => _threadVcpu is { } v && Array.IndexOf(_vcpus ?? [], v) >= 0;

    private void RunLoop(KvmVcpu v, GuestCallbacks cb, CancellationToken token)
    {
        _threadVcpu = v;
        v.EnterRunThread();
        try
        {
            kvm_run* run = v.Run;
            while (true)
            {
                if (token.IsCancellationRequested || v.StopRequested) throw new OperationCanceledException(token);
                int r = Libc.ioctl(v.Fd.Fd, KvmIoctl.KVM_RUN, 0ul);
                if (r < 0)
                {
                    int errno = Libc.Errno;
                    if (errno == Errno.EINTR || errno == Errno.EAGAIN)
                    {
                        v.ClearImmediateExit(); // a kick or immediate_exit: see whether a stop was asked for
                        continue;
                    }
                    throw new KvmException("KVM_RUN", errno, $"vCPU {v.Index}");
                }
                var reason = (KvmExitReason)run->exit_reason;
                switch (reason)
                {
                    case KvmExitReason.KVM_EXIT_IO:
                        if (HandleIo(v, run, cb, token)) return;
                        break;
                    case KvmExitReason.KVM_EXIT_HLT:
                        cb.OnDone?.Invoke(v.Index);
                        return; // no in-kernel irqchip: HLT ends the program like ucall done
                    case KvmExitReason.KVM_EXIT_INTR:
                        break;
                    case KvmExitReason.KVM_EXIT_DIRTY_RING_FULL:
                        OnRingFull(v);
                        break;
                    case KvmExitReason.KVM_EXIT_MMIO:
                    {
                        ulong pa = run->mmio.phys_addr;
                        uint len = run->mmio.len;
                        bool write = run->mmio.is_write != 0;
                        throw Guest(v, reason, $"guest {(write ? "wrote" : "read")} {len} bytes at gpa 0x{pa:x}, which no memslot backs");
                    }
                    case KvmExitReason.KVM_EXIT_SHUTDOWN:
                        throw Guest(v, reason, "triple fault (an exception with no usable IDT, e.g. a page fault on unmapped memory)");
                    case KvmExitReason.KVM_EXIT_FAIL_ENTRY:
                        throw Guest(v, reason, $"VM entry failed: hardware_entry_failure_reason 0x{run->fail_entry.hardware_entry_failure_reason:x} on cpu {run->fail_entry.cpu}");
                    case KvmExitReason.KVM_EXIT_INTERNAL_ERROR:
                    {
                        uint sub = run->@internal.suberror;
                        uint nd = Math.Min(run->@internal.ndata, 16u);
                        ulong* words = run->@internal.data;
                        var data = string.Join(" ", Enumerable.Range(0, (int)nd).Select(k => $"0x{words[k]:x}"));
                        string what = sub switch
                        {
                            1 => "KVM_INTERNAL_ERROR_EMULATION (instruction emulation failed)",
                            2 => "KVM_INTERNAL_ERROR_SIMUL_EX (exception while delivering an exception)",
                            3 => "KVM_INTERNAL_ERROR_DELIVERY_EV (exit while delivering an event)",
                            4 => "KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON",
                            _ => $"suberror {sub}",
                        };
                        throw Guest(v, reason, what + (nd > 0 ? $"; data: {data}" : ""));
                    }
                    case KvmExitReason.KVM_EXIT_SYSTEM_EVENT:
                        throw Guest(v, reason, $"system event type {run->system_event.type}");
                    default:
                        throw Guest(v, reason, $"exit reason {(uint)reason} is not expected by the VirtLab guest ABI");
                }
            }
        }
        finally
        {
            v.LeaveRunThread();
            v.ClearImmediateExit();
            _threadVcpu = null;
        }
    }

    private KvmGuestException Guest(KvmVcpu v, KvmExitReason reason, string detail)
        => new(v.Index, reason, GuestFailureHint?.Invoke() is { } hint ? $"{detail}; {hint}" : detail, v.TryRegisters());

    /// <summary>Names a likely cause of a failed guest (e.g. the host overwrote the system slot), or null.</summary>
    public Func<string?>? GuestFailureHint { get; set; }

    /// <summary>Returns true when the guest said done.</summary>
    private bool HandleIo(KvmVcpu v, kvm_run* run, GuestCallbacks cb, CancellationToken token)
    {
        byte dir = run->io.direction, size = run->io.size;
        ushort port = run->io.port;
        uint count = run->io.count;
        ulong dataOffset = run->io.data_offset;
        if (port != Ucall.Port || dir != KvmConst.KVM_EXIT_IO_OUT || size != 4 || count != 1)
            throw Guest(v, KvmExitReason.KVM_EXIT_IO,
                $"port I/O {(dir == KvmConst.KVM_EXIT_IO_OUT ? "out" : "in")} size {size} count {count} on port 0x{port:x}; the guest ABI uses `out dx, eax` on port 0x{Ucall.Port:x}");
        uint call = *(uint*)((byte*)run + (long)dataOffset); // within the vCPU mmap, as KVM placed it
        switch (call)
        {
            case Ucall.Done:
                cb.OnDone?.Invoke(v.Index);
                return true;
            case Ucall.Sync:
                cb.OnSync?.Invoke(v.Index, v.GetRegs().rsi, token);
                return false;
            case Ucall.Assert:
            {
                var regs = v.TryRegisters();
                throw new GuestAssertException(v.Index, ReadGuestString(regs?.Rsi ?? 0), regs);
            }
            case Ucall.Yield:
                return false;
            case Ucall.Print:
                var text = ReadGuestString(v.GetRegs().rsi);
                if (cb.OnPrint != null) cb.OnPrint(v.Index, text);
                else Console.Out.WriteLine($"[vcpu{v.Index}] {text}");
                return false;
            default:
                throw Guest(v, KvmExitReason.KVM_EXIT_IO, $"unknown ucall {call} (0 done, 1 sync, 2 assert, 3 print, 4 yield)");
        }
    }

    /// <summary>Host pointer for [gpa, gpa+len) if one memslot (system or user) holds all of it.</summary>
    public byte* HostPointer(ulong gpa, ulong len)
    {
        // Written so nothing wraps: gpa comes from guest registers and may be anything.
        if (_layout != null && len <= _layout.Size && gpa <= _layout.Size - len) return (byte*)_sysHost + gpa;
        lock (_regions)
            foreach (var r in _regions.Values)
                if (gpa >= r.Gpa && len <= r.Size && gpa - r.Gpa <= r.Size - len) return (byte*)r.Hva + (gpa - r.Gpa);
        return null;
    }

    private string ReadGuestString(ulong gpa)
    {
        var bytes = new List<byte>();
        for (ulong i = 0; i < 4096; i++)
        {
            var p = HostPointer(gpa + i, 1);
            if (p == null) return bytes.Count == 0 ? $"<message at gpa 0x{gpa:x} is outside guest memory>" : Encoding.UTF8.GetString(bytes.ToArray());
            if (*p == 0) break;
            bytes.Add(*p);
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    /// <summary>Write a NUL-terminated string into the system slot's data area; returns its gpa.</summary>
    public ulong PutString(ref ulong cursor, string s)
    {
        var b = Encoding.UTF8.GetBytes(s + "\0");
        if (_layout == null) throw new InvalidOperationException("system slot not registered");
        if (cursor + (ulong)b.Length > SystemLayout.DataSize / 2) throw new InvalidOperationException("guest data area full");
        ulong gpa = SystemLayout.DataGpa + cursor;
        b.CopyTo(new Span<byte>((byte*)_sysHost + gpa, b.Length));
        cursor += (ulong)b.Length;
        return gpa;
    }

    /// <summary>Host pointer into the system slot.</summary>
    public byte* SystemHost(ulong gpa) => (byte*)_sysHost + gpa;

    // ---------------------------------------------------------------- binary stats

    private readonly List<KvmStats> _stats = new();
    private KvmStats? _vmStats;

    /// <summary>The VM's binary stats fd (opened once, closed with the VM).</summary>
    public KvmStats VmStats
    {
        get
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (_vmStats != null) return _vmStats;
            _vmStats = new KvmStats(_vm, "VM");
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
            foreach (var t in threads) if (t != Thread.CurrentThread) t.Join();
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
        if (_ownedHost != 0) Libc.munmap(_ownedHost, (nuint)_ownedSize);
        _ownedHost = 0;
        _sysHost = 0;
    }
}
