using System.Buffers.Binary;
using System.Collections.Immutable;
using System.Reflection;
using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace VirtLab.Shell.Scripting;

/// <summary>
/// Script code runs fully optimized from its first call. Roslyn emits it optimized (OptimizationLevel.Release), but the
/// JIT would still start every method at Tier 0 — a measurement loop in a recipe's top-level code runs once, so it
/// would run at Tier 0 (or as on-stack-replacement code) for its whole life. Setting
/// <see cref="MethodImplAttributes.AggressiveOptimization"/> on every method of the emitted image makes the JIT compile
/// each one straight at full optimization, for this code only: the shell, the SDK and Roslyn keep tiered compilation
/// and their ReadyToRun images (a process-wide knob such as DOTNET_TC_QuickJitForLoops=0 would slow Roslyn down).
/// Script methods are also marked <see cref="MethodImplAttributes.NoInlining"/>: optimized code would otherwise inline
/// one script method into another and a runtime error's stack trace would lose the recipe's file:line frames (the SDK's
/// methods are still inlined into script code). The flags live in the MethodDef table's ImplFlags column, so they are
/// set in place in the image; nothing else changes.
/// </summary>
public static class ScriptOptimization
{
    public const string Description = "Roslyn OptimizationLevel.Release; every method marked AggressiveOptimization (fully optimized JIT at its first call, no Tier 0, no OSR) and NoInlining (script frames stay in stack traces)";

    private const ushort Flags = (ushort)(MethodImplAttributes.AggressiveOptimization | MethodImplAttributes.NoInlining);

    /// <summary>Sets AggressiveOptimization and NoInlining on every method with an IL body; returns the same array.</summary>
    public static byte[] MarkAggressiveOptimization(byte[] image)
    {
        int metadataStart, table, rowSize, rows;
        var targets = new List<int>();
        using (var pe = new PEReader(ImmutableArray.Create(image)))
        {
            var md = pe.GetMetadataReader();
            metadataStart = pe.PEHeaders.MetadataStartOffset;
            table = md.GetTableMetadataOffset(TableIndex.MethodDef);
            rowSize = md.GetTableRowSize(TableIndex.MethodDef);
            rows = md.GetTableRowCount(TableIndex.MethodDef);
            for (int row = 1; row <= rows; row++)
            {
                var def = md.GetMethodDefinition(MetadataTokens.MethodDefinitionHandle(row));
                var impl = def.ImplAttributes;
                if (def.RelativeVirtualAddress == 0 || (impl & MethodImplAttributes.CodeTypeMask) != MethodImplAttributes.IL
                    || (impl & MethodImplAttributes.NoOptimization) != 0) continue;
                targets.Add(row);
            }
        }
        foreach (var row in targets)
        {
            // Row layout: RVA (4 bytes), ImplFlags (2 bytes), Flags, Name, Signature, ParamList.
            var at = image.AsSpan(metadataStart + table + (row - 1) * rowSize + 4, 2);
            BinaryPrimitives.WriteUInt16LittleEndian(at, (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(at) | Flags));
        }
        return image;
    }
}
