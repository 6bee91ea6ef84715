using VirtLab.Sdk.Measure;
using VirtLab.Shell.Rendering;

namespace VirtLab.Shell.Cli;

/// <summary><c>virtlab run --plots DIR</c>: after the run, the stage-time chart, one chart per per-iteration series in the
/// results and every Plot the recipe made, as PNG or SVG files; the run record lists them.</summary>
public static class RunPlots
{
    public static readonly string[] Formats = ["png", "svg"];

    /// <returns>The files written, or null without --plots. A chart that cannot be drawn is a warning, never a failed run.</returns>
    public static IReadOnlyList<PlotFile>? Write(RunOptions o, RecipeContext context, TextWriter err)
    {
        if (o.PlotsDirectory is null) return null;
        var files = new List<PlotFile>();
        foreach (var plot in PlotRenderer.ForRun(context))
        {
            var path = PlotRenderer.PathFor(o.PlotsDirectory, files.Count + 1, plot, o.PlotFormat);
            try
            {
                PlotRenderer.Save(plot, path);
                files.Add(new PlotFile(plot.Title, plot.Kind, path));
            }
            catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException or InvalidOperationException)
            {
                err.WriteLine($"virtlab run: cannot draw plot '{plot.Title}': {e.Message}");
            }
        }
        err.WriteLine($"virtlab run: {files.Count} plot{(files.Count == 1 ? "" : "s")} written to {Path.GetFullPath(o.PlotsDirectory)}");
        return files;
    }
}
