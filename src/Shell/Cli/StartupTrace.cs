using System.Diagnostics;

namespace VirtLab.Shell.Cli;

/// <summary>
/// <c>VIRTLAB_TRACE_STARTUP=1</c>: one stderr line per start-up mark, in ms since the process started (for measuring
/// where a run's first fraction of a second goes; off by default and costs nothing then).
/// </summary>
public static class StartupTrace
{
    public static readonly bool Enabled = Environment.GetEnvironmentVariable("VIRTLAB_TRACE_STARTUP") == "1";
    private static readonly DateTime Started = Enabled ? Process.GetCurrentProcess().StartTime.ToUniversalTime() : default;

    public static void Mark(string what)
    {
        if (!Enabled) return;
        Console.Error.WriteLine($"[startup {Environment.ProcessId}] {(DateTime.UtcNow - Started).TotalMilliseconds,7:0.0} ms  {what}" +
            $"  (JIT: {System.Runtime.JitInfo.GetCompiledMethodCount()} methods, {System.Runtime.JitInfo.GetCompilationTime().TotalMilliseconds:0} ms, " +
            $"this thread {System.Runtime.JitInfo.GetCompiledMethodCount(currentThread: true)} methods, {System.Runtime.JitInfo.GetCompilationTime(currentThread: true).TotalMilliseconds:0} ms)");
    }
}
