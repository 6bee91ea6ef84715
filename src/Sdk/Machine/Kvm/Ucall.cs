using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// The VirtLab guest ABI, in one place: guest→host calls are <c>out dx, eax</c> with dx = <see cref="Port"/> and
/// eax = the call (like the KVM selftests' ucall). rdi = the vCPU index at entry. The guest side is emitted by the
/// <see cref="UcallAssembler"/> extensions (used by the workload compiler, raw-assembly programs and tests), the
/// host side is decoded by <see cref="TryDecode"/> (used by the run loop). HLT also ends a vCPU's program.
/// </summary>
public static class Ucall
{
    /// <summary>The I/O port guest code writes a ucall to (as the selftests' UCALL_PIO).</summary>
    public const ushort Port = 0x1000;

    /// <summary>The vCPU's program is finished.</summary>
    public const uint Done = 0;
    /// <summary>GUEST_SYNC: rsi = the pass; the host may block the vCPU here (a barrier across vCPUs).</summary>
    public const uint Sync = 1;
    /// <summary>GUEST_ASSERT failed: rsi = gpa of a NUL-terminated message; the run fails with it.</summary>
    public const uint Assert = 2;
    /// <summary>Print: rsi = gpa of a NUL-terminated message, shown on the host.</summary>
    public const uint Print = 3;
    /// <summary>No-op exit: gives KVM a guest entry to service pending requests (e.g. a soft-full dirty ring).</summary>
    public const uint Yield = 4;

    /// <summary>The calls, as error messages and docs list them.</summary>
    public const string Summary = "0 done, 1 sync (rsi = pass), 2 assert (rsi = message), 3 print (rsi = message), 4 yield";

    /// <summary>
    /// The host side: the call number of a port-I/O exit, or why that exit is not a ucall (the message the run
    /// loop fails with). Unknown call numbers are refused here too, so a caller only switches on the five calls.
    /// </summary>
    internal static bool TryDecode(KvmExit.Io io, out uint call, out string error)
    {
        call = io.Value;
        if (io.Port != Port || !io.Out || io.Size != 4 || io.Count != 1)
        {
            error = $"port I/O {(io.Out ? "out" : "in")} size {io.Size} count {io.Count} on port 0x{io.Port:x}; the guest ABI uses `out dx, eax` on port 0x{Port:x}";
            return false;
        }
        if (call > Yield)
        {
            error = $"unknown ucall {call} ({Summary})";
            return false;
        }
        error = "";
        return true;
    }

}

/// <summary>The guest side of <see cref="Ucall"/>: emitters for Iced's <see cref="Assembler"/>.</summary>
public static class UcallAssembler
{
    /// <summary>Emit a ucall: <c>mov eax, call; mov edx, 0x1000; out dx, eax</c> (clobbers eax and edx).</summary>
    public static void Ucall(this Assembler a, uint call)
    {
        a.mov(eax, call);
        a.mov(edx, (uint)Kvm.Ucall.Port);
        a.@out(dx, eax);
    }

    /// <summary>GUEST_SYNC(rsi): set rsi to the pass first.</summary>
    public static void UcallSync(this Assembler a) => a.Ucall(Kvm.Ucall.Sync);

    /// <summary>The guest's final ucall (<see cref="Kvm.Ucall.Done"/>).</summary>
    public static void UcallDone(this Assembler a) => a.Ucall(Kvm.Ucall.Done);

    /// <summary>A no-op exit (see <see cref="Kvm.Ucall.Yield"/>).</summary>
    public static void UcallYield(this Assembler a) => a.Ucall(Kvm.Ucall.Yield);

    /// <summary>GUEST_ASSERT failure with <paramref name="message"/> embedded after the call (rsi = its address).</summary>
    public static void UcallAssert(this Assembler a, string message) => EmitWithString(a, Kvm.Ucall.Assert, message);

    /// <summary>GUEST_ASSERT failure with a message already in guest memory at gpa <paramref name="messageGpa"/>.</summary>
    public static void UcallAssert(this Assembler a, ulong messageGpa)
    {
        a.mov(rsi, messageGpa);
        a.Ucall(Kvm.Ucall.Assert);
    }

    /// <summary>Print <paramref name="message"/> on the host (rsi = its address).</summary>
    public static void UcallPrint(this Assembler a, string message) => EmitWithString(a, Kvm.Ucall.Print, message);

    private static void EmitWithString(Assembler a, uint call, string message)
    {
        var text = a.CreateLabel();
        var after = a.CreateLabel();
        a.lea(rsi, __qword_ptr[text]); // code is identity-mapped: gva == gpa
        a.Ucall(call);
        a.jmp(after);
        a.Label(ref text);
        a.db(System.Text.Encoding.UTF8.GetBytes(message + "\0"));
        a.Label(ref after);
        a.nop(); // a label needs an instruction to bind to
    }
}
