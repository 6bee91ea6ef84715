using System.Diagnostics;
using System.Reflection;
using System.Text;

namespace VirtLab.Shell.Scripting;

/// <summary>
/// Formats an exception a script threw: type, message, then the frames worth reading — the script's own
/// as <c>at file:line</c>, and SDK/plugin frames by method — without the runtime's, the shell's or Roslyn's.
/// </summary>
public static class ScriptExceptions
{
    public static string Format(Exception e, Func<Assembly, bool> isScriptAssembly)
    {
        e = VirtLab.Sdk.Measure.RecipeContext.Unwrap(e)!;
        var sb = new StringBuilder();
        sb.Append(e.GetType().FullName).Append(": ").Append(e.Message).Append('\n');
        AppendFrames(sb, e, isScriptAssembly);
        for (var inner = e.InnerException; inner is not null; inner = inner.InnerException)
        {
            sb.Append(" ---> ").Append(inner.GetType().FullName).Append(": ").Append(inner.Message).Append('\n');
            AppendFrames(sb, inner, isScriptAssembly);
        }
        return sb.ToString();
    }

    // An async method runs as <Name>d__N.MoveNext in a nested state machine: show it as the method it is.
    private static string MethodName(MethodBase method)
    {
        var type = method.DeclaringType;
        if (method.Name == "MoveNext" && type is { Name: ['<', ..] name, DeclaringType: { } outer } && name.IndexOf('>') is > 1 and var close)
            return $"{outer.FullName}.{name[1..close]}";
        return $"{type?.FullName}.{method.Name}";
    }

    private static void AppendFrames(StringBuilder sb, Exception e, Func<Assembly, bool> isScriptAssembly)
    {
        string? last = null;
        foreach (var frame in new StackTrace(e, fNeedFileInfo: true).GetFrames())
        {
            var method = frame.GetMethod();
            var asm = method?.Module.Assembly;
            if (method is null || asm is null) continue;
            string line;
            var file = frame.GetFileName();
            if (isScriptAssembly(asm))
            {
                if (file is null) continue; // compiler-generated plumbing (the factory, state machine glue)
                line = $"   at {file}:{frame.GetFileLineNumber()}";
            }
            else
            {
                var name = asm.GetName().Name ?? "";
                if (name is "virtlab" or "System.Private.CoreLib" or "netstandard" || name.StartsWith("System.", StringComparison.Ordinal)
                    || name.StartsWith("Microsoft.", StringComparison.Ordinal)) continue;
                line = $"   at {MethodName(method)}" + (file is null ? "" : $" in {file}:{frame.GetFileLineNumber()}");
            }
            if (line != last) sb.Append(line).Append('\n'); // async state machines can repeat a frame
            last = line;
        }
    }
}
