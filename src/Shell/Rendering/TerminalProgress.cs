using System.Diagnostics;
using System.Globalization;
using System.Text;
using VirtLab.Sdk.Measure;

namespace VirtLab.Shell.Rendering;

/// <summary>
/// The live progress bar of <c>virtlab run</c> and the REPL: one line on the terminal, redrawn ten times a second while
/// an SDK operation reports progress (<see cref="Progress"/>), with rate and ETA; erased when the operation ends.
/// Installed only when stdout and stderr are both terminals, so redirected output never holds a byte of it.
/// Script output goes through writers that erase the bar first (it is redrawn on the next tick), so lines never mix.
/// Ctrl+C is untouched: the bar runs on a timer thread and never waits for the recipe.
/// </summary>
public sealed class TerminalProgress : IProgressListener, IDisposable
{
    /// <summary>An operation shorter than this never shows a bar (no flicker for small sizes).</summary>
    public static readonly TimeSpan ShowAfter = TimeSpan.FromMilliseconds(250);

    private readonly Lock _sync = new();
    private readonly List<ProgressReporter> _active = [];
    private readonly TextWriter _terminal; // the real stderr: where the bar is drawn
    private readonly TextWriter _stdout, _stderr;
    private readonly IDisposable _listening;
    private readonly Timer _timer;
    private bool _drawn, _atLineStart = true, _disposed;

    private TerminalProgress()
    {
        _stdout = Console.Out;
        _stderr = _terminal = Console.Error;
        Console.SetOut(new ErasingWriter(_stdout, this));
        Console.SetError(new ErasingWriter(_stderr, this));
        _listening = Progress.Listen(this);
        _timer = new Timer(_ => Draw(), null, 100, 100);
    }

    /// <summary>
    /// Starts showing progress for this async flow when stdout and stderr are terminals (and VIRTLAB_PROGRESS is not 0);
    /// else returns null and nothing changes. Call before the first use of <see cref="Consoles"/>, which binds to Console.Out.
    /// </summary>
    public static TerminalProgress? InstallIfTerminal()
    {
        if (Console.IsOutputRedirected || Console.IsErrorRedirected) return null;
        if (Environment.GetEnvironmentVariable("VIRTLAB_PROGRESS") is "0" or "never") return null;
        return new TerminalProgress();
    }

    public void Started(ProgressReporter reporter)
    {
        lock (_sync) _active.Add(reporter);
    }

    public void Finished(ProgressReporter reporter)
    {
        lock (_sync)
        {
            _active.Remove(reporter);
            if (_active.Count == 0) Erase();
        }
    }

    /// <summary>Redraws the bar of the newest operation (called by the timer).</summary>
    private void Draw()
    {
        lock (_sync)
        {
            if (_disposed) return;
            var shown = _active.LastOrDefault(r => r.Elapsed >= ShowAfter && !r.IsFinished);
            if (shown is null) { Erase(); return; }
            if (!_atLineStart) return; // the script left a partial line: do not write over it
            int width;
            try { width = Console.WindowWidth; } catch (IOException) { width = 0; }
            if (width <= 0) width = 80; // a pseudo-terminal without a window size
            var line = Format(shown, _active.Count - 1, Math.Max(20, width - 1));
            _terminal.Write("\r\x1b[2K" + line);
            _terminal.Flush();
            _drawn = true;
        }
    }

    private void Erase()
    {
        if (!_drawn) return;
        _terminal.Write("\r\x1b[2K");
        _terminal.Flush();
        _drawn = false;
    }

    /// <summary>"name  [█████▌    ]  55%  4.4 GiB / 8.0 GiB  1.1 GiB/s  ETA 3s", fitted to <paramref name="width"/>.</summary>
    public static string Format(ProgressReporter r, int others, int width)
    {
        var done = r.Done;
        var seconds = r.Elapsed.TotalSeconds;
        var rate = seconds > 0 ? done / seconds : 0;
        var bytes = r.Unit == "B";
        string Amount(double v) => bytes ? new Size((long)v).ToString() : v.ToString("#,0", CultureInfo.InvariantCulture);
        var sb = new StringBuilder();
        string tail;
        if (r.Total > 0)
        {
            var fraction = Math.Clamp(done / (double)r.Total, 0, 1);
            var eta = rate > 0 && done < r.Total ? TimeSpan.FromSeconds((r.Total - done) / rate) : (TimeSpan?)null;
            tail = $"  {fraction * 100,3:0}%  {Amount(done)} / {Amount(r.Total)}{(bytes ? "" : " " + r.Unit)}  {Rate(rate, bytes, r.Unit)}" +
                   (eta is { } e ? $"  ETA {Duration(e)}" : "");
            var head = r.Name + "  ";
            var barWidth = Math.Clamp(width - head.Length - tail.Length - 2 - (others > 0 ? 6 : 0), 10, 40);
            sb.Append(head).Append('[').Append(Bar(fraction, barWidth)).Append(']').Append(tail);
        }
        else
            sb.Append(r.Name).Append("  ").Append(Amount(done)).Append(bytes ? "" : " " + r.Unit).Append("  ").Append(Rate(rate, bytes, r.Unit))
              .Append("  ").Append(Duration(r.Elapsed));
        if (others > 0) sb.Append($"  (+{others})");
        return sb.Length > width ? sb.ToString(0, width) : sb.ToString();
    }

    private static string Rate(double perSecond, bool bytes, string unit) =>
        bytes ? new Size((long)perSecond) + "/s" : perSecond.ToString(perSecond >= 100 ? "#,0" : "0.0", CultureInfo.InvariantCulture) + (unit.Length > 0 ? $" {unit}/s" : "/s");

    private static string Duration(TimeSpan t) =>
        t.TotalSeconds < 60 ? $"{t.TotalSeconds:0}s" : t.TotalHours < 1 ? $"{(int)t.TotalMinutes}m{t.Seconds:00}s" : $"{(int)t.TotalHours}h{t.Minutes:00}m";

    /// <summary>Full blocks, one eighth-block for the remainder, spaces for the rest.</summary>
    public static string Bar(double fraction, int width)
    {
        const string eighths = " ▏▎▍▌▋▊▉";
        var units = (int)Math.Round(Math.Clamp(fraction, 0, 1) * width * 8);
        var sb = new StringBuilder(new string('█', units / 8));
        if (units / 8 < width && units % 8 > 0) sb.Append(eighths[units % 8]);
        return sb.ToString().PadRight(width);
    }

    public void Dispose()
    {
        lock (_sync)
        {
            if (_disposed) return;
            _disposed = true;
            Erase();
        }
        _timer.Dispose();
        _listening.Dispose();
        Console.SetOut(_stdout);
        Console.SetError(_stderr);
    }

    /// <summary>Erases the bar before passing a write through, and tells the bar whether the cursor is at a line start.</summary>
    private sealed class ErasingWriter(TextWriter inner, TerminalProgress owner) : TextWriter
    {
        public override Encoding Encoding => inner.Encoding;
        public override IFormatProvider FormatProvider => inner.FormatProvider;

        public override void Write(char value) => Pass(value.ToString());
        public override void Write(string? value) => Pass(value);
        public override void Write(char[] buffer, int index, int count) => Pass(new string(buffer, index, count));
        public override void Write(ReadOnlySpan<char> buffer) => Pass(new string(buffer));
        public override void WriteLine(string? value) => Pass(value + NewLine);
        public override void WriteLine() => Pass(NewLine);
        public override void Flush() => inner.Flush();

        private void Pass(string? s)
        {
            if (string.IsNullOrEmpty(s)) return;
            lock (owner._sync)
            {
                owner.Erase();
                inner.Write(s);
                inner.Flush();
                owner._atLineStart = s[^1] == '\n';
            }
        }
    }
}
