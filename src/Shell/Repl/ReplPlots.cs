using VirtLab.Sdk.Measure;
using VirtLab.Shell.Rendering;

namespace VirtLab.Shell.Repl;

/// <summary>In the REPL, each Plot(...) is drawn at once to a PNG (VIRTLAB_PLOTS, else $TMPDIR/virtlab-plots-UID/) and the path
/// is printed; the returned value then shows as sparklines or a compact heatmap.</summary>
internal static class ReplPlots
{
    private static int _count;

    public static string Directory =>
        Environment.GetEnvironmentVariable("VIRTLAB_PLOTS") is { Length: > 0 } d ? d : Path.Combine(Path.GetTempPath(), $"virtlab-plots-{Environment.UserName}");

    public static void Write(PlotRequest plot)
    {
        var path = PlotRenderer.PathFor(Directory, Interlocked.Increment(ref _count), plot, "png");
        try
        {
            PlotRenderer.Save(plot, path);
            Console.Error.WriteLine($"plot written: {path}");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            Console.Error.WriteLine($"plot '{plot.Title}' not written: {e.Message}");
        }
    }
}

/// <summary>A listener that shows nothing (quiet replays).</summary>
internal sealed class SilentProgress : IProgressListener
{
    public static readonly SilentProgress Instance = new();
    public void Started(ProgressReporter reporter) { }
    public void Finished(ProgressReporter reporter) { }
}
