using System.Text;
using Iced.Intel;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Tests.Kvm;

/// <summary>
/// A raw <see cref="KvmMachine"/> without the Machine layer, for the backend's own tests: it maps and registers the
/// system slot (what the Vm layer does in production), maps user slots, runs assembled programs, spills ring-full
/// exits, and unmaps everything after the VM is gone. The mmap/run/munmap scaffolding the tests share.
/// </summary>
internal sealed unsafe class KvmRig : IDisposable
{
    public KvmMachine M { get; }
    private readonly List<(nint Host, ulong Size)> _maps = [];
    private readonly List<(uint Slot, ulong Offset)> _ringSpill = [];
    private ulong _stringCursor;

    public KvmRig(int vcpus = 1, int ringBytes = 0, bool manualProtect = false, bool initiallySet = false)
    {
        M = new KvmMachine(vcpus);
        try
        {
            if (ringBytes > 0)
            {
                M.EnableDirtyRing(ringBytes);
                // What the Vm layer's ring does on a full ring: harvest every vCPU, then reset, on the exiting vCPU's thread.
                M.OnDirtyRingFull = _ =>
                {
                    lock (_ringSpill)
                    {
                        for (int i = 0; i < M.VcpuCount; i++) M.HarvestDirtyRing(i, (s, o) => _ringSpill.Add((s, o)));
                        M.ResetDirtyRings();
                    }
                };
            }
            if (manualProtect) M.EnableManualProtect(initiallySet);
            ulong size = SystemLayout.AlignUp(SystemLayout.MinSize(vcpus) + (4ul << 20), 2ul << 20);
            M.SetUserMemoryRegion(M.SystemSlot, 0, 0, size, Map(size));
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    /// <summary>Anonymous private memory, unmapped when the rig is disposed (after the VM).</summary>
    public nint Map(ulong size, bool noReserve = false)
    {
        int flags = Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | (noReserve ? Libc.MAP_NORESERVE : 0);
        nint host = Libc.MmapChecked(0, (long)size, Libc.PROT_READ | Libc.PROT_WRITE, flags, -1, 0, "a KvmRig slot");
        _maps.Add((host, size));
        return host;
    }

    /// <summary>Map <paramref name="size"/> bytes and register them as <paramref name="slot"/> at <paramref name="gpa"/>; returns the host address.</summary>
    public nint AddSlot(uint slot, ulong gpa, ulong size, uint flags = 0, bool noReserve = false)
    {
        nint host = Map(size, noReserve);
        M.SetUserMemoryRegion(slot, flags, gpa, size, host);
        return host;
    }

    /// <summary>Assemble at the code address and run on every vCPU.</summary>
    public void Run(Action<Assembler> program, GuestCallbacks? callbacks = null, CancellationToken token = default)
        => M.Run(Assemble(program), 0, callbacks ?? new GuestCallbacks(), token);

    public static byte[] Assemble(Action<Assembler> body, ulong rip = SystemLayout.CodeGpa)
    {
        var a = new Assembler(64);
        body(a);
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), rip);
        return ms.ToArray();
    }

    /// <summary>Write a NUL-terminated string into the system slot's data area; returns its gpa.</summary>
    public ulong PutString(string s)
    {
        var b = Encoding.UTF8.GetBytes(s + "\0");
        if (_stringCursor + (ulong)b.Length > SystemLayout.DataSize / 2) throw new InvalidOperationException("guest data area full");
        ulong gpa = SystemLayout.DataGpa + _stringCursor;
        b.CopyTo(new Span<byte>(M.SystemHost(gpa), b.Length));
        _stringCursor += (ulong)b.Length;
        return gpa;
    }

    /// <summary>Every ring entry: the ones spilled at ring-full exits, then each vCPU's ring (harvested and reset).</summary>
    public List<(uint Slot, ulong Offset)> HarvestAllRings()
    {
        var got = new List<(uint, ulong)>();
        lock (_ringSpill)
        {
            got.AddRange(_ringSpill);
            _ringSpill.Clear();
        }
        for (int i = 0; i < M.VcpuCount; i++) M.HarvestDirtyRing(i, (s, o) => got.Add((s, o)));
        M.ResetDirtyRings();
        return got;
    }

    public void Dispose()
    {
        M.Dispose(); // the VM first: KVM must not see a slot whose memory is gone
        foreach (var (host, size) in _maps) Libc.munmap(host, (nuint)size);
        _maps.Clear();
    }
}
