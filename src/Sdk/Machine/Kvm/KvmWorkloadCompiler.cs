using System.Numerics;
using Iced.Intel;
using static Iced.Intel.AssemblerRegisters;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>
/// Compiles a <see cref="WorkloadPlan"/> to x86-64 that makes exactly the accesses of <see cref="WorkloadCursor"/>:
/// same stride order, same Park–Miller draws in the same order, same write decisions. One program serves every
/// vCPU; per-vCPU parameters (slice, seed, role) come from its record in system slot 0, found via rdi.
/// </summary>
internal static class KvmWorkloadCompiler
{
    // Offsets inside a vCPU record (SystemLayout.Record(vcpu)).
    public const int RecSliceGva = 0, RecStrides = 8, RecRng = 16, RecRole = 24, RecWrites = 32, RecReads = 40,
        RecModulus = 48, RecHundred = 56, RecLcgMask = 64, RecLcgC = 72, RecWriteValue = 80, RecYieldCountdown = 88;

    /// <summary>
    /// With a dirty ring, the guest exits (ucall yield) after this many writes. KVM only checks the ring's soft-full
    /// request on guest entry; an instruction emulator (PVM here) may run many writes within one entry, and more than
    /// KVM_DIRTY_RING_RSVD_ENTRIES (64) pushes past the soft limit overflow the ring (WARN, entries lost).
    /// </summary>
    public const int YieldEveryWrites = 32;

    private const uint ParkMillerModulus = 0x7fffffff;

    /// <summary>Write each vCPU's record; the page tables must be built (gva of the range known).</summary>
    public static unsafe void WriteRecords(WorkloadPlan plan, KvmMachine m)
    {
        var w = plan.Workload;
        for (int v = 0; v < plan.Vcpus; v++)
        {
            var slice = plan.Slices[v];
            var rec = (ulong*)m.SystemHost(SystemLayout.Record(v));
            new Span<byte>(rec, (int)SystemLayout.RecordSize).Clear();
            rec[RecSliceGva / 8] = m.GvaOf(slice.Gpa(plan)) + (ulong)w.Offset;
            rec[RecStrides / 8] = (ulong)slice.Strides;
            ulong seed = ((ulong)w.Seed + (ulong)v) % ParkMillerModulus;
            rec[RecRng / 8] = seed == 0 ? 1 : seed;
            rec[RecRole / 8] = slice.Role switch { VcpuRole.Writer => 1ul, VcpuRole.Reader => 2ul, _ => 0ul };
            rec[RecModulus / 8] = ParkMillerModulus;
            rec[RecHundred / 8] = 100;
            rec[RecLcgMask / 8] = slice.Strides > 0 ? BitOperations.RoundUpToPowerOf2((ulong)slice.Strides) - 1 : 0;
            rec[RecWriteValue / 8] = w.WriteValue;
            rec[RecYieldCountdown / 8] = YieldEveryWrites;
        }
    }

    public static unsafe (ulong Writes, ulong Reads) ReadCounters(KvmMachine m, int vcpu)
    {
        var rec = (ulong*)m.SystemHost(SystemLayout.Record(vcpu));
        return (Volatile.Read(ref rec[RecWrites / 8]), Volatile.Read(ref rec[RecReads / 8]));
    }

    /// <summary>
    /// Per role: the reads and writes of one stride when they are fixed at compile time (the guest then keeps no
    /// counters and the host multiplies by the slice's strides), or null when the guest counts random decisions.
    /// </summary>
    public static (long Writes, long Reads)? StaticCountsPerStride(WorkloadPlan plan, VcpuRole role)
    {
        long writes = 0, reads = 0;
        foreach (var acc in plan.Accesses)
        {
            switch (Resolve(plan.Workload, acc, role))
            {
                case Op.Write: writes += acc.Count; break;
                case Op.Read: reads += acc.Count; break;
                default: return null;
            }
        }
        return (writes, reads);
    }

    private static bool RandomDecisions(Workload w, VcpuRole role) =>
        role == VcpuRole.Mixed && !(w.Order == AccessOrder.Sequential && w.WritePercent is 0 or 100);

    private static Op Resolve(Workload w, StrideAccess acc, VcpuRole role) => acc.Op switch
    {
        AccessOp.Write => Op.Write,
        AccessOp.Read => Op.Read,
        _ => role switch
        {
            VcpuRole.Writer => Op.Write,
            VcpuRole.Reader => Op.Read,
            // With sequential order nothing else consumes random numbers, so constant decisions need no draws.
            _ when !RandomDecisions(w, role) => w.WritePercent == 100 ? Op.Write : Op.Read,
            _ => Op.Random,
        },
    };

    /// <summary>Assemble the program for <paramref name="plan"/>, linked at the code area of slot 0.</summary>
    public static byte[] Compile(WorkloadPlan plan, bool yieldForDirtyRing)
    {
        var w = plan.Workload;
        var a = new Assembler(64);

        // Entry: rdi = vCPU index → rbp = its record. Registers: r8 slice base (gva, + offset), r9 strides,
        // r10 stride counter, r11 Park–Miller state, r12 pass, r13/r14 writes/reads, r15 write value,
        // rbx current stride, rsi access pointer, rdi shuffle state; rax/rdx/rcx scratch.
        a.mov(rbp, rdi);
        a.shl(rbp, 7); // RecordSize = 128
        a.add(rbp, (int)SystemLayout.RecordsGpa);
        a.mov(r8, __qword_ptr[rbp + RecSliceGva]);
        a.mov(r9, __qword_ptr[rbp + RecStrides]);
        a.mov(r11, __qword_ptr[rbp + RecRng]);
        a.mov(r15, __qword_ptr[rbp + RecWriteValue]);
        a.xor(r12d, r12d);
        a.xor(r13d, r13d);
        a.xor(r14d, r14d);

        var roles = plan.Slices.Select(s => s.Role).Distinct().ToArray();
        var entries = roles.ToDictionary(r => r, _ => a.CreateLabel());
        a.mov(rax, __qword_ptr[rbp + RecRole]);
        foreach (var r in roles)
        {
            a.cmp(eax, r switch { VcpuRole.Writer => 1, VcpuRole.Reader => 2, _ => 0 });
            a.je(entries[r]);
        }
        a.hlt(); // unreachable: every role present has an entry

        foreach (var role in roles)
        {
            var label = entries[role];
            a.Label(ref label);
            a.nop(); // binds the role label; EmitPasses starts with its own
            EmitPasses(a, plan, role, yieldForDirtyRing);
        }
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), SystemLayout.CodeGpa);
        return ms.ToArray();
    }

    // Guest instructions are what an emulating host (PVM here, ~1–6 µs each) pays for, so the loops are lean:
    // sequential order walks a pointer (5 instructions per 8-byte write), and counters exist only for random decisions.
    private static void EmitPasses(Assembler a, WorkloadPlan plan, VcpuRole role, bool yield)
    {
        var w = plan.Workload;
        bool counts = StaticCountsPerStride(plan, role) is null;
        var passLoop = a.CreateLabel();
        var strideLoop = a.CreateLabel();
        var passEnd = a.CreateLabel();
        bool sequential = w.Order == AccessOrder.Sequential;

        a.Label(ref passLoop);
        if (counts && w.SyncEachPass)
        {
            a.xor(r13d, r13d);
            a.xor(r14d, r14d);
        }
        if (sequential)
        {
            a.mov(rbx, r8);
            a.mov(r10, r9);
        }
        else a.xor(r10d, r10d);
        a.test(r9, r9);
        a.jz(passEnd);
        if (w.Order == AccessOrder.Shuffled)
        {
            // BeginPass: x0 = rand() & mask; c = (rand()·2 + 1) & mask.
            EmitRand(a);
            a.and(rax, __qword_ptr[rbp + RecLcgMask]);
            a.mov(rdi, rax);
            EmitRand(a);
            a.add(rax, rax);
            a.inc(rax);
            a.and(rax, __qword_ptr[rbp + RecLcgMask]);
            a.mov(__qword_ptr[rbp + RecLcgC], rax);
        }

        a.Label(ref strideLoop);
        if (!sequential)
        {
            if (w.Order == AccessOrder.Random)
            {
                EmitRand(a);
                a.xor(edx, edx);
                a.div(r9);
                a.mov(rax, rdx);
            }
            else
            {
                // x = lcgX; lcgX = (5x + c) & mask; skip x past the slice (the stride loop starts right here).
                a.mov(rax, rdi);
                a.lea(rdi, __qword_ptr[rdi + rdi * 4]);
                a.add(rdi, __qword_ptr[rbp + RecLcgC]);
                a.and(rdi, __qword_ptr[rbp + RecLcgMask]);
                a.cmp(rax, r9);
                a.jae(strideLoop);
            }
            // rbx = slice base (+ workload offset) + index · stride
            if (BitOperations.IsPow2(w.Stride)) a.shl(rax, (byte)BitOperations.Log2((ulong)w.Stride));
            else
            {
                a.mov(rdx, (ulong)w.Stride);
                a.imul(rax, rdx);
            }
            a.lea(rbx, __qword_ptr[r8 + rax]);
        }

        foreach (var acc in plan.Accesses)
        {
            var op = Resolve(w, acc, role);
            if (acc.Count == 1 && acc.Offset <= int.MaxValue)
            {
                EmitOp(a, __qword_ptr[rbx + (int)acc.Offset], op, w.WritePercent, yield, counts);
                continue;
            }
            if (acc.Offset <= int.MaxValue) a.lea(rsi, __qword_ptr[rbx + (int)acc.Offset]);
            else { a.mov(rsi, (ulong)acc.Offset); a.add(rsi, rbx); }
            if (acc.Count == 1)
            {
                EmitOp(a, __qword_ptr[rsi], op, w.WritePercent, yield, counts);
                continue;
            }
            var rep = a.CreateLabel();
            a.mov(ecx, acc.Count);
            a.Label(ref rep);
            EmitOp(a, __qword_ptr[rsi], op, w.WritePercent, yield, counts);
            if (acc.Step <= int.MaxValue) a.add(rsi, (int)acc.Step);
            else { a.mov(rax, (ulong)acc.Step); a.add(rsi, rax); }
            a.dec(ecx);
            a.jnz(rep);
        }
        if (sequential)
        {
            if (w.Stride <= int.MaxValue) a.add(rbx, (int)w.Stride);
            else { a.mov(rax, (ulong)w.Stride); a.add(rbx, rax); }
            a.dec(r10);
            a.jnz(strideLoop);
        }
        else
        {
            a.inc(r10);
            a.cmp(r10, r9);
            a.jb(strideLoop);
        }

        a.Label(ref passEnd);
        if (counts)
        {
            a.mov(__qword_ptr[rbp + RecWrites], r13);
            a.mov(__qword_ptr[rbp + RecReads], r14);
        }
        if (w.SyncEachPass)
        {
            a.mov(rsi, r12);
            a.UcallSync();
        }
        a.inc(r12);
        a.cmp(r12, w.Passes);
        a.jb(passLoop);
        a.UcallDone();
        a.hlt();
    }

    private enum Op { Read, Write, Random }

    private static void EmitWrite(Assembler a, AssemblerMemoryOperand mem, bool yield, bool counts)
    {
        a.mov(mem, r15);
        if (counts) a.inc(r13);
        if (!yield) return;
        var skip = a.CreateLabel();
        a.dec(__qword_ptr[rbp + RecYieldCountdown]);
        a.jnz(skip);
        a.mov(__qword_ptr[rbp + RecYieldCountdown], YieldEveryWrites);
        a.UcallYield();
        a.Label(ref skip);
        a.nop();
    }

    private static void EmitRead(Assembler a, AssemblerMemoryOperand mem, bool counts)
    {
        a.mov(rax, mem);
        if (counts) a.inc(r14);
    }

    private static void EmitOp(Assembler a, AssemblerMemoryOperand mem, Op op, int writePercent, bool yield, bool counts)
    {
        switch (op)
        {
            case Op.Write:
                EmitWrite(a, mem, yield, counts);
                break;
            case Op.Read:
                EmitRead(a, mem, counts);
                break;
            default:
            {
                var write = a.CreateLabel();
                var end = a.CreateLabel();
                EmitRand(a);
                a.xor(edx, edx);
                a.div(__qword_ptr[rbp + RecHundred]);
                a.cmp(edx, writePercent);
                a.jb(write);
                EmitRead(a, mem, counts);
                a.jmp(end);
                a.Label(ref write);
                EmitWrite(a, mem, yield, counts);
                a.Label(ref end);
                a.nop(); // binds `end` even when the next thing emitted is another label
                break;
            }
        }
    }

    // r11 ← r11 · 48271 mod (2^31 − 1); rax = r11. Clobbers rdx.
    private static void EmitRand(Assembler a)
    {
        a.imul(rax, r11, 48271);
        a.xor(edx, edx);
        a.div(__qword_ptr[rbp + RecModulus]);
        a.mov(r11, rdx);
        a.mov(rax, rdx);
    }
}
