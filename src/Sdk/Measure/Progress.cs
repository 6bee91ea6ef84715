using System.Diagnostics;

namespace VirtLab.Sdk.Measure;

/// <summary>
/// Progress of long operations (populating gigabytes, workloads with many passes, balloon inflation, migration
/// rounds), for a live progress bar. The shell installs a listener for a run when it can show one (a terminal);
/// otherwise <see cref="Start"/> returns <see cref="ProgressReporter.None"/> and reporting costs nothing.
/// <code>
/// using var p = Progress.Start("inflate", pages, "pages");
/// for (...) { ...; p.Advance(batch); }
/// </code>
/// Ambient like the stage set: the listener belongs to the async flow (and the threads and tasks it starts) of
/// the run that installed it. A reporter may be advanced from any thread.
/// </summary>
public static class Progress
{
    private static readonly AsyncLocal<IProgressListener?> Current = new();

    /// <summary>The listener of this async flow, or null when nobody shows progress.</summary>
    public static IProgressListener? Listener => Current.Value;

    /// <summary>True when a listener would see a reporter started here; use it to skip work done only for progress.</summary>
    public static bool IsListening => Current.Value is not null;

    /// <summary>Installs <paramref name="listener"/> for this async flow and what it starts; dispose to restore the previous one.</summary>
    public static IDisposable Listen(IProgressListener listener)
    {
        ArgumentNullException.ThrowIfNull(listener);
        var previous = Current.Value;
        Current.Value = listener;
        return new Restore(previous);
    }

    /// <summary>No listener for this async flow until disposed: work that is not the user's (the warm-up) shows no bar.</summary>
    internal static IDisposable Silence()
    {
        var previous = Current.Value;
        Current.Value = null;
        return new Restore(previous);
    }

    /// <summary>
    /// Starts reporting an operation of <paramref name="total"/> units (0 = unknown total); dispose the reporter when
    /// the operation ends, also on failure. <paramref name="unit"/> "B" shows sizes and byte rates; any other unit
    /// is shown as a count ("passes", "pages").
    /// </summary>
    public static ProgressReporter Start(string name, long total, string unit = "")
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        ArgumentOutOfRangeException.ThrowIfNegative(total);
        ArgumentNullException.ThrowIfNull(unit);
        var listener = Current.Value;
        if (listener is null) return ProgressReporter.None;
        var reporter = new ProgressReporter(listener, name, total, unit);
        listener.Started(reporter);
        return reporter;
    }

    /// <summary>
    /// Runs <paramref name="body"/>(offset, length) over [0, <paramref name="total"/>) in pieces of <paramref name="chunk"/>
    /// units, advancing a reporter after each; without a listener it is one call over the whole range. For work that is
    /// one system call when nobody watches (madvise over gigabytes). <paramref name="chunk"/> must keep the caller's alignment.
    /// </summary>
    public static void Chunked(string name, long total, long chunk, Action<long, long> body, string unit = "B")
    {
        ArgumentNullException.ThrowIfNull(body);
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(chunk);
        if (!IsListening || total <= chunk)
        {
            if (total > 0) body(0, total);
            return;
        }
        using var p = Start(name, total, unit);
        for (long off = 0; off < total; off += chunk)
        {
            var len = Math.Min(chunk, total - off);
            body(off, len);
            p.Advance(len);
        }
    }

    private sealed class Restore(IProgressListener? previous) : IDisposable
    {
        private int _done;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0) Current.Value = previous;
        }
    }
}

/// <summary>Shows progress (the shell's terminal bar; a test's recorder). Calls come from the reporting thread: return quickly.</summary>
public interface IProgressListener
{
    /// <summary>A reporter started.</summary>
    void Started(ProgressReporter reporter);
    /// <summary>A reporter finished.</summary>
    void Finished(ProgressReporter reporter);
}

/// <summary>One operation's progress: <see cref="Advance"/> as work completes, dispose when it ends. Thread-safe.</summary>
public sealed class ProgressReporter : IDisposable
{
    private readonly IProgressListener? _listener;
    private long _done;
    private int _finished;

    /// <summary>The reporter handed out when nobody listens: every call returns at once.</summary>
    public static ProgressReporter None { get; } = new(null, "none", 0, "");

    internal ProgressReporter(IProgressListener? listener, string name, long total, string unit)
    {
        _listener = listener;
        Name = name;
        Total = total;
        Unit = unit;
    }

    /// <summary>What is being counted.</summary>
    public string Name { get; }
    /// <summary>Units the operation has in all; 0 when unknown.</summary>
    public long Total { get; }
    /// <summary>Unit of the count (pages, ops, …).</summary>
    public string Unit { get; }
    /// <summary>When the reporter started (Stopwatch timestamp).</summary>
    public long StartTimestamp { get; } = Stopwatch.GetTimestamp();
    /// <summary>Units done so far.</summary>
    public long Done => Volatile.Read(ref _done);
    /// <summary>Whether the work finished.</summary>
    public bool IsFinished => Volatile.Read(ref _finished) != 0;
    /// <summary>Time since the start.</summary>
    public TimeSpan Elapsed => Stopwatch.GetElapsedTime(StartTimestamp);

    /// <summary>Adds <paramref name="n"/> completed units.</summary>
    public void Advance(long n = 1)
    {
        if (_listener is null) return;
        Interlocked.Add(ref _done, n);
    }

    /// <summary>Sets the completed units (for work that knows its position rather than its increments).</summary>
    public void Report(long done)
    {
        if (_listener is null) return;
        Volatile.Write(ref _done, done);
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (_listener is null || Interlocked.Exchange(ref _finished, 1) != 0) return;
        _listener.Finished(this);
    }

    /// <inheritdoc/>
    public override string ToString() => Total > 0 ? $"{Name}: {Done}/{Total} {Unit}".TrimEnd() : $"{Name}: {Done} {Unit}".TrimEnd();
}
