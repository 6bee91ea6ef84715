using System.Globalization;
using System.Text;
using Microsoft.CodeAnalysis.CSharp;

namespace VirtLab.Shell.Scripting;

/// <summary>
/// A session's first compile (the plugin preamble: Roslyn's cold compile, most of a REPL's start) begun before the
/// plugins are loaded, from the compile inputs the last session of this build had (<see cref="Remember"/>). The REPL's
/// evaluation host starts it first thing, loads its plugins meanwhile, and the session takes it when the plugins give
/// the same inputs (<see cref="InteractiveSession"/>), its compiler included: one set of references for the whole chain.
/// Anything else (no record, a plugin rebuilt, added or gone) makes the session compile its preamble itself.
/// </summary>
public sealed class PreparedPreamble
{
    private const string Format = "virtlab-repl-preamble 1";
    private readonly Task<Compiled> _compile;

    /// <summary>The compile ahead: its compiler (the session goes on with it) and the preamble's compilation and image.</summary>
    internal sealed record Compiled(ScriptCompiler Compiler, CSharpCompilation Compilation, EmittedSubmission? Submission, IReadOnlyList<ScriptDiagnostic> Diagnostics);

    private PreparedPreamble(CompileInputs inputs, string baseDirectory, Type globalsType)
    {
        Inputs = inputs;
        BaseDirectory = baseDirectory;
        SessionId = Guid.NewGuid().ToString("N")[..12];
        var name = InteractiveSession.AssemblyName(SessionId, 1);
        var done = new TaskCompletionSource<Compiled>(TaskCreationOptions.RunContinuationsAsynchronously);
        _compile = done.Task;
        // Everything Roslyn on that thread, the compiler's construction included: the starting thread goes on at once.
        new Thread(() =>
        {
            try
            {
                var compiler = new ScriptCompiler(inputs, globalsType, baseDirectory);
                var compilation = compiler.CreateSubmission(name, ScriptCompiler.Parse(inputs.Preamble!, ct: _cancel.Token), null);
                var (sub, diags) = compiler.Emit(compilation, _cancel.Token);
                done.SetResult(new Compiled(compiler, compilation, sub, diags));
            }
            catch (Exception e) { done.SetException(e); }
        }, 16 << 20) { Name = "virtlab-preamble", IsBackground = true }.Start();
    }

    private readonly CancellationTokenSource _cancel = new();

    /// <summary>Stops the compile of a preamble no session will take (its CPU is the real session's).</summary>
    public void Cancel() => _cancel.Cancel();

    public CompileInputs Inputs { get; }
    public string BaseDirectory { get; }
    public string SessionId { get; }
    /// <summary>Whether a session with these inputs can take it.</summary>
    public bool Fits(CompileInputs inputs, string baseDirectory) =>
        baseDirectory == BaseDirectory && inputs.Preamble == Inputs.Preamble
        && inputs.PluginPaths.SequenceEqual(Inputs.PluginPaths, StringComparer.Ordinal) && inputs.Imports.SequenceEqual(Inputs.Imports, StringComparer.Ordinal);

    /// <summary>Waits for the compile (the session's first step); null if it failed.</summary>
    internal Compiled? Result()
    {
        try { return _compile.GetAwaiter().GetResult(); }
        catch (Exception) { return null; } // (never but for a bug: the session compiles its preamble itself)
    }

    /// <summary>Starts compiling the last remembered preamble in <paramref name="file"/> when its plugin files are unchanged; else null.</summary>
    public static PreparedPreamble? Start(string file, Type globalsType, string baseDirectory)
    {
        try
        {
            if (!File.Exists(file)) return null;
            using var r = new StringReader(File.ReadAllText(file));
            if (r.ReadLine() != Format) return null;
            var paths = new List<string>();
            for (int n = int.Parse(r.ReadLine()!, CultureInfo.InvariantCulture); n > 0; n--)
            {
                var parts = r.ReadLine()!.Split('\t');
                var info = new FileInfo(parts[0]);
                if (!info.Exists || info.Length != long.Parse(parts[1], CultureInfo.InvariantCulture)
                    || info.LastWriteTimeUtc.Ticks != long.Parse(parts[2], CultureInfo.InvariantCulture)) return null; // rebuilt or gone
                paths.Add(parts[0]);
            }
            var imports = new List<string>();
            for (int n = int.Parse(r.ReadLine()!, CultureInfo.InvariantCulture); n > 0; n--) imports.Add(r.ReadLine()!);
            var preamble = r.ReadToEnd();
            if (preamble.Length == 0) return null;
            return new PreparedPreamble(new CompileInputs(paths, imports, preamble), baseDirectory, globalsType);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException or OverflowException or NullReferenceException or IndexOutOfRangeException)
        {
            return null;
        }
    }

    /// <summary>Records a session's inputs for the next start (nothing without a preamble); best effort.</summary>
    public static void Remember(string file, CompileInputs inputs)
    {
        try
        {
            if (inputs.Preamble is null) { File.Delete(file); return; }
            var sb = new StringBuilder(Format).Append('\n').Append(inputs.PluginPaths.Count.ToString(CultureInfo.InvariantCulture)).Append('\n');
            foreach (var p in inputs.PluginPaths)
            {
                var info = new FileInfo(p);
                sb.Append(p).Append('\t').Append(info.Length.ToString(CultureInfo.InvariantCulture)).Append('\t')
                  .Append(info.LastWriteTimeUtc.Ticks.ToString(CultureInfo.InvariantCulture)).Append('\n');
            }
            sb.Append(inputs.Imports.Count.ToString(CultureInfo.InvariantCulture)).Append('\n');
            foreach (var i in inputs.Imports) sb.Append(i).Append('\n');
            sb.Append(inputs.Preamble);
            Directory.CreateDirectory(Path.GetDirectoryName(file)!);
            var temp = file + "." + Environment.ProcessId + ".tmp";
            File.WriteAllText(temp, sb.ToString());
            File.Move(temp, file, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { }
    }
}
