using System.Collections.Immutable;
using VirtLab.Sdk.Measure;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Sdk.Machine;

/// <summary>Memslots: add, resize, remove, validation, and the retirement that makes teardown safe (see <see cref="SlotGuard"/>).</summary>
public abstract partial class Vm
{
    // ---- memslots -------------------------------------------------------------------------------

    /// <summary>
    /// Adds a memslot of <paramref name="size"/> bytes. Without <paramref name="gpa"/> it goes right below the lowest
    /// non-system slot (aligned to its backing's page size); without <paramref name="id"/> it takes the lowest free id ≥ 2.
    /// </summary>
    public MemSlot AddSlot(Size size, Backing? backing = null, ulong? gpa = null, int? id = null, bool logDirtyPages = false)
    {
        ThrowIfDisposed();
        var b = backing ?? Options.Backing;
        lock (_slotLock)
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
        lock (_slotLock)
        {
            var old = Slot(id); // re-checks `disposed` under the lock
            if (old.IsSystem) throw new InvalidOperationException("slot 0 is the system slot (code, stacks, page tables); it cannot be resized");
            ThrowIfRunning("resize a memslot");
            ValidateSlot(id, newSize.Bytes, old.Backing, old.Gpa, ignore: old);
            CheckHostMemory(newSize.Bytes - old.Size.Bytes);
            var mapping = HostMapping.Create(newSize.Bytes, old.Backing, $"slot {id}");
            var log = old.LogDirtyPages;
            // Retire first: a dirty-log call that saw the old slot finishes before the kernel memslot goes (no ENOENT).
            Retire([old]);
            try
            {
                DeleteMemoryRegion(old);
            }
            catch
            {
                mapping.Dispose();
                _orphans.Add(old.Mapping); // the kernel may still map it: unmapped only when the VM goes
                throw;
            }
            old.Mapping.Dispose();
            return Install(id, old.Gpa, mapping, log);
        }
    }

    /// <summary>Deletes a memslot (memory_size 0) and unmaps its memory.</summary>
    public void RemoveSlot(int id)
    {
        ThrowIfDisposed();
        lock (_slotLock)
        {
            var s = Slot(id); // re-checks `disposed` under the lock
            if (s.IsSystem) throw new InvalidOperationException("slot 0 is the system slot (code, stacks, page tables); it cannot be removed");
            ThrowIfRunning("remove a memslot");
            Retire([s]); // see ResizeSlot
            try { DeleteMemoryRegion(s); }
            catch
            {
                _orphans.Add(s.Mapping);
                throw;
            }
            s.Mapping.Dispose();
        }
    }

    MemSlot AddSlotCore(int id, long size, Backing backing, ulong gpa, bool logDirtyPages)
    {
        lock (_slotLock)
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

    void Publish(ImmutableArray<MemSlot> next)
    {
        ImmutableInterlocked.InterlockedExchange(ref _slots, next);
        OnMappingsChanged();
    }

    long _mappingEpoch;

    /// <summary>
    /// Moves whenever a translation of any address space of this VM may have changed (a memslot published, an IOVA
    /// space's table published): device-side caches (ring pointers, a queue's last translation) compare it with one
    /// load and re-validate against <see cref="AddressSpace.Generation"/> only when it moved.
    /// </summary>
    internal long MappingEpoch => Volatile.Read(ref _mappingEpoch);

    /// <summary>Called after a change is published (so a reader that sees the new epoch sees the change).</summary>
    internal void OnMappingsChanged() => Interlocked.Increment(ref _mappingEpoch);

    /// <summary>Takes slots out of the VM (under the slot lock) and waits until no thread that still saw them as current
    /// uses them (<see cref="SlotGuard"/>: a guest-memory access, a dirty-log ioctl): only then may their memory be
    /// unmapped, their id be re-created with another size, or the VM fd be closed.</summary>
    void Retire(IReadOnlyCollection<MemSlot> gone, bool vmToo = false)
    {
        foreach (var s in gone) s.MarkRemoved();
        Publish(SlotsSnapshot.RemoveRange(gone));
        var set = gone.Select(s => s.Serial).ToHashSet();
        if (vmToo) set.Add(Serial);
        SlotGuard.WaitUntilUnused(set);
    }

    void ValidateSlot(int id, long size, Backing backing, ulong gpa, MemSlot? ignore)
    {
        VmOptions.CheckDefined(backing, "backing");
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
}
