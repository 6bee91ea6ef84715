using System.Globalization;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Measure;

namespace VirtLab.Shell.Rendering;

/// <summary>
/// The stage table as shown on a terminal: the SDK's columns plus an inline bar of each stage's share of the total,
/// so proportions are seen at a glance. Redirected output keeps the SDK's plain table.
/// </summary>
public static class StageTable
{
    public const int BarWidth = 24;

    public static IRenderable WithBars(StageSet set)
    {
        var records = set.Records;
        var total = records.Where(r => r.Parent is null).Sum(r => r.Seconds);
        var max = records.Count == 0 ? 0 : records.Max(r => r.Seconds);
        var table = new Table().Border(TableBorder.Rounded);
        if (set.Title is not null) table.Title(Markup.Escape(set.Title));
        table.AddColumn("stage");
        table.AddColumn(new TableColumn("ms").RightAligned());
        table.AddColumn(new TableColumn("share").RightAligned());
        table.AddColumn(new TableColumn(""));
        table.AddColumn("counters");
        var depth = new Dictionary<string, int>();
        foreach (var r in records)
        {
            var d = r.Parent is not null && depth.TryGetValue(r.Parent, out var pd) ? pd + 1 : 0;
            depth[r.Name] = d;
            var name = new string(' ', 2 * d) + r.Name + (r.Runs > 1 ? $" ×{r.Runs}" : "");
            // Bars scale to the longest stage so the largest fills the column; top-level ones in green, nested in grey.
            var bar = max > 0 ? TerminalProgress.Bar(r.Seconds / max, BarWidth).TrimEnd() : "";
            table.AddRow(
                new Text(name),
                new Text(Ms(r.Seconds)),
                new Text(total > 0 ? (r.Seconds / total * 100).ToString("0.0", CultureInfo.InvariantCulture) + " %" : ""),
                new Markup($"[{(d == 0 ? "green" : "grey")}]{Markup.Escape(bar)}[/]"),
                new Text(Counters(r)));
        }
        if (records.Count > 1) table.AddRow(new Markup("[bold]total[/]"), new Markup($"[bold]{Ms(total)}[/]"), new Text(""), new Text(""), new Text(""));
        return table;
    }

    private static string Ms(double seconds)
    {
        var ms = seconds * 1000;
        return ms.ToString(ms < 10 ? "0.000" : ms < 1000 ? "0.0" : "#,0", CultureInfo.InvariantCulture);
    }

    private static string Counters(StageRecord r) => string.Join(", ", r.Counters.Select(c =>
        $"{c.Key} {c.Value.ToString("#,0", CultureInfo.InvariantCulture)}" +
        (r.Seconds > 0 ? $" ({Rate.Format(c.Value / r.Seconds, "").TrimEnd()}/s)" : "")));
}
