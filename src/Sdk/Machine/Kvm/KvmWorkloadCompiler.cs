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
        RecModulus = 48, RecHundred = 56, RecLcgMask = 64, RecLcgC = 72, RecWriteValue = 80;

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
        }
    }

    public static unsafe (ulong Writes, ulong Reads) ReadCounters(KvmMachine m, int vcpu)
    {
        var rec = (ulong*)m.SystemHost(SystemLayout.Record(vcpu));
        return (Volatile.Read(ref rec[RecWrites / 8]), Volatile.Read(ref rec[RecReads / 8]));
    }

    /// <summary>Assemble the program for <paramref name="plan"/>, linked at the code area of slot 0.</summary>
    public static byte[] Compile(WorkloadPlan plan)
    {
        var w = plan.Workload;
        var a = new Assembler(64);
        bool countPerPass = w.SyncEachPass;

        // Entry: rdi = vCPU index → rbp = its record.
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
            EmitPasses(a, plan, role, countPerPass);
        }
        using var ms = new MemoryStream();
        a.Assemble(new StreamCodeWriter(ms), SystemLayout.CodeGpa);
        return ms.ToArray();
    }

    private static void EmitPasses(Assembler a, WorkloadPlan plan, VcpuRole role, bool countPerPass)
    {
        var w = plan.Workload;
        var passLoop = a.CreateLabel();
        var strideLoop = a.CreateLabel();
        var passEnd = a.CreateLabel();

        a.Label(ref passLoop);
        if (countPerPass)
        {
            a.xor(r13d, r13d);
            a.xor(r14d, r14d);
        }
        a.xor(r10d, r10d);
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
        switch (w.Order)
        {
            case AccessOrder.Sequential:
                a.mov(rax, r10);
                break;
            case AccessOrder.Random:
                EmitRand(a);
                a.xor(edx, edx);
                a.div(r9);
                a.mov(rax, rdx);
                break;
            case AccessOrder.Shuffled:
            {
                var again = a.CreateLabel();
                a.Label(ref again);
                a.mov(rax, rdi);
                a.lea(rdi, __qword_ptr[rdi + rdi * 4]);
                a.add(rdi, __qword_ptr[rbp + RecLcgC]);
                a.and(rdi, __qword_ptr[rbp + RecLcgMask]);
                a.cmp(rax, r9);
                a.jae(again);
                break;
            }
        }
        // rbx = slice base (+ workload offset) + index · stride
        if (BitOperations.IsPow2(w.Stride)) a.shl(rax, (byte)BitOperations.Log2((ulong)w.Stride));
        else
        {
            a.mov(rdx, (ulong)w.Stride);
            a.imul(rax, rdx);
        }
        a.lea(rbx, __qword_ptr[r8 + rax]);

        bool randDecisions = role == VcpuRole.Mixed && !(w.Order == AccessOrder.Sequential && w.WritePercent is 0 or 100);
        foreach (var acc in plan.Accesses)
        {
            var op = acc.Op switch
            {
                AccessOp.Write => Op.Write,
                AccessOp.Read => Op.Read,
                _ => role switch
                {
                    VcpuRole.Writer => Op.Write,
                    VcpuRole.Reader => Op.Read,
                    // With sequential order nothing else consumes random numbers, so constant decisions need no draws.
                    _ => w.WritePercent == 100 && !randDecisions ? Op.Write : w.WritePercent == 0 && !randDecisions ? Op.Read : Op.Random,
                },
            };
            if (acc.Count == 1)
            {
                if (acc.Offset <= int.MaxValue) a.lea(rsi, __qword_ptr[rbx + (int)acc.Offset]);
                else { a.mov(rsi, (ulong)acc.Offset); a.add(rsi, rbx); }
                EmitOp(a, op, w.WritePercent);
            }
            else
            {
                var rep = a.CreateLabel();
                if (acc.Offset <= int.MaxValue) a.lea(rsi, __qword_ptr[rbx + (int)acc.Offset]);
                else { a.mov(rsi, (ulong)acc.Offset); a.add(rsi, rbx); }
                a.mov(ecx, acc.Count);
                a.Label(ref rep);
                EmitOp(a, op, w.WritePercent);
                if (acc.Step <= int.MaxValue) a.add(rsi, (int)acc.Step);
                else { a.mov(rax, (ulong)acc.Step); a.add(rsi, rax); }
                a.dec(ecx);
                a.jnz(rep);
            }
        }
        a.inc(r10);
        a.cmp(r10, r9);
        a.jb(strideLoop);

        a.Label(ref passEnd);
        a.mov(__qword_ptr[rbp + RecWrites], r13);
        a.mov(__qword_ptr[rbp + RecReads], r14);
        if (w.SyncEachPass)
        {
            a.mov(rsi, r12);
            a.mov(eax, Ucall.Sync);
            a.mov(edx, (uint)Ucall.Port);
            a.@out(dx, eax);
        }
        a.inc(r12);
        a.cmp(r12, w.Passes);
        a.jb(passLoop);
        a.mov(eax, Ucall.Done);
        a.mov(edx, (uint)Ucall.Port);
        a.@out(dx, eax);
        a.hlt();
    }

    private enum Op { Read, Write, Random }

    // Access at [rsi].
    private static void EmitOp(Assembler a, Op op, int writePercent)
    {
        switch (op)
        {
            case Op.Write:
                a.mov(__qword_ptr[rsi], r15);
                a.inc(r13);
                break;
            case Op.Read:
                a.mov(rax, __qword_ptr[rsi]);
                a.inc(r14);
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
                a.mov(rax, __qword_ptr[rsi]);
                a.inc(r14);
                a.jmp(end);
                a.Label(ref write);
                a.mov(__qword_ptr[rsi], r15);
                a.inc(r13);
                a.Label(ref end);
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
