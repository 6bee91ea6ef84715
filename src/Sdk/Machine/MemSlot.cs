using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>
/// A memslot: guest-physical range [<see cref="Gpa"/>, <see cref="EndGpa"/>) backed by one host mapping
/// (<c>struct kvm_userspace_memory_region</c>). Page indexes (gfn − base_gfn) count 4 KiB pages, as in KVM's dirty_bitmap.
/// </summary>
public sealed class MemSlot
{
    readonly Vm _vm;
    internal readonly HostMapping Mapping;
    volatile bool _logDirtyPages;
    volatile bool _removed;

    internal MemSlot(Vm vm, int id, ulong gpa, HostMapping mapping)
    {
        this._vm = vm;
        Id = id;
        Gpa = gpa;
        Mapping = mapping;
    }

    /// <summary>The slot number (KVM memslot id): 0 is the system slot, 1 the test slot.</summary>
    public int Id { get; }

    /// <summary>Names this slot object in <see cref="SlotGuard"/> announcements.</summary>
    internal readonly long Serial = SlotGuard.NewSerial();

    /// <summary>guest_phys_addr.</summary>
    public ulong Gpa { get; }

    /// <summary>The slot's size.</summary>
    public Size Size => new(Mapping.Length);

    /// <summary>Guest-physical end (exclusive).</summary>
    public ulong EndGpa => Gpa + (ulong)Mapping.Length;

    /// <summary>4 KiB pages (npages) — the bits of its dirty bitmap.</summary>
    public long Pages => Mapping.Length >> 12;

    /// <summary>base_gfn.</summary>
    public ulong BaseGfn => Gpa >> 12;

    /// <summary>What backs the slot's memory.</summary>
    public Backing Backing => Mapping.Backing;

    /// <summary>The backing's page size.</summary>
    public long PageSize => Mapping.PageSize;

    /// <summary>userspace_addr: where the slot is mapped in this process. Raw: it is unmapped when the slot is removed
    /// or resized or the VM disposed, and nothing guards a pointer made from it; access guest memory through
    /// <see cref="Vm.Memory"/> (safe against teardown) unless the slot's lifetime is yours.</summary>
    public nint HostAddress => Mapping.Address;

    /// <summary>Slot 0 holds the backend's own code, stacks and page tables; it cannot be removed or resized.</summary>
    public bool IsSystem => Id == 0;

    /// <summary>The VM the slot belongs to.</summary>
    public Vm Vm => _vm;

    /// <summary>Backend-private state (e.g. the simulator's dirty bitmap).</summary>
    internal object? BackendState { get; set; }

    /// <summary>
    /// <c>KVM_MEM_LOG_DIRTY_PAGES</c>. Setting it re-issues the memory region with the new flags: on, every page is
    /// write-protected (or, with INITIALLY_SET, every bit is set); off, the dirty bitmap is freed.
    /// </summary>
    public bool LogDirtyPages
    {
        get => _logDirtyPages;
        set => _vm.SetLogDirtyPages(this, value);
    }

    internal void SetLogFlag(bool on) => _logDirtyPages = on;

    /// <summary>The slot left its VM (removed, resized into a new slot object, or the VM disposed); never undone.</summary>
    internal bool Removed => _removed;

    internal void MarkRemoved() => _removed = true;

    /// <summary>KVM_MEM_* flags as the kernel sees them.</summary>
    public uint Flags => _logDirtyPages ? 1u : 0u;

    /// <summary><c>KVM_GET_DIRTY_LOG</c> into a new bitmap. Without manual protect this also clears the log and re-protects the pages it reports.</summary>
    public DirtyBitmap GetDirtyLog()
    {
        var b = new DirtyBitmap(Pages);
        _vm.GetDirtyLog(this, b);
        return b;
    }

    /// <summary><c>KVM_GET_DIRTY_LOG</c> into <paramref name="into"/> (a bitmap of <see cref="Pages"/> pages), without allocating.</summary>
    public DirtyBitmap GetDirtyLog(DirtyBitmap into)
    {
        _vm.GetDirtyLog(this, into);
        return into;
    }

    /// <summary>
    /// <c>KVM_CLEAR_DIRTY_LOG</c> over pages [<paramref name="firstPage"/>, +<paramref name="numPages"/>): clears (and
    /// re-protects) the pages whose bit is set in <paramref name="mask"/> — a bitmap of the whole slot, same indexing as
    /// <see cref="GetDirtyLog()"/> — or every page of the range when <paramref name="mask"/> is null.
    /// first_page must be a multiple of 64; num_pages too unless the range ends at the slot's end.
    /// </summary>
    public void ClearDirtyLog(long firstPage, long numPages, DirtyBitmap? mask = null) => _vm.ClearDirtyLog(this, firstPage, numPages, mask);

    /// <summary>Clears exactly the pages set in <paramref name="mask"/>, over the whole slot.</summary>
    public void ClearDirtyLog(DirtyBitmap mask) => _vm.ClearDirtyLog(this, 0, Pages, mask);

    /// <summary>Whether guest-physical <paramref name="gpa"/> lies in the slot.</summary>
    public bool Contains(ulong gpa) => gpa >= Gpa && gpa < EndGpa;

    /// <inheritdoc/>
    public override string ToString()
        => $"slot {Id}: [0x{Gpa:x}, 0x{EndGpa:x}) {Size} {Backing.Name()}{(_logDirtyPages ? " log-dirty" : "")}";
}
