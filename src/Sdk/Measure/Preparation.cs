using System.Reflection.PortableExecutable;

namespace VirtLab.Sdk.Measure;

/// <summary>
/// How the process was prepared before the recipe's first line ran, for the run record: whether each assembly ran from
/// a ReadyToRun image, the JIT tiering settings, how script code is compiled, and what the warm-up ran. A timing that
/// includes JIT work shows here (a plugin left as IL, a warm-up error, methods JIT-compiled during the recipe).
/// </summary>
public sealed record Preparation
{
    /// <summary>Assembly name → "ReadyToRun", "ReadyToRun (composite)" (its code is in a composite image shared with
    /// other assemblies), "IL" or "IL (Debug build: JIT optimizations disabled)".</summary>
    public required IReadOnlyDictionary<string, string> Images { get; init; }
    /// <summary>How the process itself is laid out (which runtime, which precompiled images), e.g. "launch layout:
    /// self-contained …, framework + NuGet packages in one composite ReadyToRun image …; shell and SDK per-assembly
    /// ReadyToRun, plugins as listed"; null where the host does not say.</summary>
    public string? Layout { get; init; }
    /// <summary>Runtime knobs in effect (TieredCompilation, TieredPGO, QuickJitForLoops, ReadyToRun).</summary>
    public required IReadOnlyDictionary<string, string> Runtime { get; init; }
    /// <summary>How recipe code is emitted and JIT-compiled.</summary>
    public required string ScriptCode { get; init; }
    /// <summary>Hot paths run before the recipe (SDK and plugins); empty when the warm-up was turned off.</summary>
    public required IReadOnlyList<string> WarmedUp { get; init; }
    /// <summary>Why no warm-up ran although it was on (a cached recipe that uses no VM, device or plugin), or null.</summary>
    public string? WarmUpSkipped { get; init; }
    /// <summary>The backend the SDK warm-up used (Kvm or Sim), or null when it did not run.</summary>
    public string? WarmUpBackend { get; init; }
    /// <summary>How long the warm-up took on its worker thread (it overlaps plugin loading and compiling).</summary>
    public double WarmUpSeconds { get; init; }
    /// <summary>How long the recipe waited for it (at its first Vm.Create); 0 when it had ended by then.</summary>
    public double WarmUpWaitSeconds { get; init; }
    /// <summary>The full collection after the warm-up, at the recipe's first Vm.Create (WarmUp.BeforeVm); 0 when none ran.</summary>
    public double SettleSeconds { get; init; }
    /// <summary>Warm-up steps that threw (the recipe runs anyway; those paths pay their first call in the recipe).</summary>
    public IReadOnlyList<string> WarmUpErrors { get; init; } = [];
    /// <summary>How the recipe was compiled: "cached" (a compiled-recipe cache hit), "server (warm, N ms, …)" (by the
    /// shell's compile server) or "in-process (why)"; null where nothing says (e.g. a REPL).</summary>
    public string? Compile { get; init; }
    /// <summary>Methods the JIT compiled before the recipe started, and while it ran (tier-1 recompiles of hot
    /// ReadyToRun code included; script code is JIT-compiled by nature).</summary>
    public long JitCompiledBeforeRecipe { get; init; }
    /// <summary>Methods the JIT compiled while the recipe ran (what precompilation and warm-up did not cover).</summary>
    public long? JitCompiledDuringRecipe { get; init; }

    /// <summary>"ReadyToRun" when the file carries a ReadyToRun header ("ReadyToRun (composite)" when that header only
    /// points to a composite image), "IL (Debug build…)" when built without optimizations, else "IL".</summary>
    public static string ImageKind(string path)
    {
        try
        {
            using var pe = new PEReader(File.OpenRead(path));
            if (pe.PEHeaders.CorHeader?.ManagedNativeHeaderDirectory is { Size: >= 12 } native)
            {
                // READYTORUN_HEADER: Signature "RTR", MajorVersion, MinorVersion, Flags (READYTORUN_FLAG_COMPONENT = 0x20).
                var header = pe.GetSectionData(native.RelativeVirtualAddress).GetReader();
                if (header.Length >= 12 && header.ReadUInt32() == 0x00525452)
                {
                    header.Offset = 8;
                    if ((header.ReadUInt32() & 0x20) != 0) return "ReadyToRun (composite)";
                }
                return "ReadyToRun";
            }
            if (pe.HasMetadata)
            {
                var md = System.Reflection.Metadata.PEReaderExtensions.GetMetadataReader(pe);
                foreach (var h in md.GetAssemblyDefinition().GetCustomAttributes())
                {
                    var a = md.GetCustomAttribute(h);
                    if (a.Constructor.Kind == System.Reflection.Metadata.HandleKind.MemberReference
                        && md.GetMemberReference((System.Reflection.Metadata.MemberReferenceHandle)a.Constructor).Parent is { Kind: System.Reflection.Metadata.HandleKind.TypeReference } t
                        && md.GetString(md.GetTypeReference((System.Reflection.Metadata.TypeReferenceHandle)t).Name) == "DebuggableAttribute")
                    {
                        // DebuggableAttribute(DebuggingModes): DisableOptimizations = 0x100.
                        var blob = md.GetBlobReader(a.Value);
                        if (blob.Length >= 6 && blob.ReadUInt16() == 1 && (blob.ReadInt32() & 0x100) != 0) return "IL (Debug build: JIT optimizations disabled)";
                    }
                }
            }
            return "IL";
        }
        catch (Exception e) when (e is IOException or BadImageFormatException or UnauthorizedAccessException) { return "unknown"; }
    }

    /// <summary>The tiering knobs as the runtime sees them (runtimeconfig properties, overridden by DOTNET_ variables).</summary>
    public static IReadOnlyDictionary<string, string> RuntimeSettings()
    {
        string Knob(string config, string env, bool dflt)
        {
            var v = Environment.GetEnvironmentVariable("DOTNET_" + env) ?? Environment.GetEnvironmentVariable("COMPlus_" + env);
            if (v is not null) return v is "0" ? "off" : "on";
            return AppContext.GetData(config) is string s ? (bool.TryParse(s, out var b) ? (b ? "on" : "off") : s) : (dflt ? "on" : "off");
        }
        return new SortedDictionary<string, string>(StringComparer.Ordinal)
        {
            ["TieredCompilation"] = Knob("System.Runtime.TieredCompilation", "TieredCompilation", true),
            ["TieredPGO"] = Knob("System.Runtime.TieredPGO", "TieredPGO", true),
            ["QuickJitForLoops"] = Knob("System.Runtime.TieredCompilation.QuickJitForLoops", "TC_QuickJitForLoops", true),
            ["ReadyToRun"] = Knob("System.Runtime.ReadyToRun", "ReadyToRun", true),
        };
    }
}
