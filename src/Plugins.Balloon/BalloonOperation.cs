using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Plugins.Balloon.Guest;
using VirtLab.Plugins.Balloon.Host;
using VirtLab.Plugins.Balloon.Protocol;
using VirtLab.Sdk;
using VirtLab.Sdk.Measure;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Balloon;

/// <summary>
/// One inflate or deflate, timed as seed 004 reports it: a. allocating pages (the guest), b. sending to the host
/// (encoding + virtqueue round trips, waiting included, less the device's own c and d), c. address translation (the
/// device validating and resolving gpa → hva through the memslots), d. madvise (the discards). a + b + c + d = total,
/// the driver's time from the config change to <c>actual</c> reaching the target. Resident memory is measured with
/// mincore before and after.
/// </summary>
public sealed record BalloonOperation : IDisplayable
{
    public required string Kind { get; init; }
    public required BalloonTransport Transport { get; init; }
    public required DiscardMode Discard { get; init; }
    public required AllocationMode Allocation { get; init; }
    public required string Backing { get; init; }
    public required Size Requested { get; init; }
    /// <summary>Pages that moved into (inflate) or out of (deflate) the balloon.</summary>
    public required long Pages { get; init; }
    public required TimeSpan Allocate { get; init; }
    public required TimeSpan Send { get; init; }
    public required TimeSpan Translate { get; init; }
    public required TimeSpan Madvise { get; init; }
    /// <summary>What the host saw: from setting the target to <c>actual</c> reaching it (includes the interrupt latency).</summary>
    public required TimeSpan Wall { get; init; }
    public required Size ResidentBefore { get; init; }
    public required Size ResidentAfter { get; init; }
    public required long Requests { get; init; }
    public required long DiscardCalls { get; init; }
    public required long Refused { get; init; }
    /// <summary>Why the operation stopped short, or null.</summary>
    public string? Note { get; init; }

    public TimeSpan Total => Allocate + Send + Translate + Madvise;
    public Size Moved => new(Pages * VirtioBalloon.PageSize);
    public Size ResidentDrop => ResidentBefore - ResidentAfter;

    public double Share(TimeSpan stage) => Total > TimeSpan.Zero ? stage / Total * 100 : 0;

    /// <summary>The stage table as a <see cref="StageSet"/> (a recipe can <c>Stages.Include</c> it into its run record).</summary>
    public StageSet ToStageSet()
    {
        var s = new StageSet($"balloon {Kind} {Moved} ({Transport.Name()})");
        s.Record("a. allocating pages", Allocate, [new("pages", Pages)]);
        s.Record("b. sending to the host", Send, [new("requests", Requests)]);
        s.Record("c. address translation", Translate);
        s.Record("d. madvise", Madvise, [new("calls", DiscardCalls)]);
        return s;
    }

    public IRenderable ToRenderable()
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"balloon {Kind} {Moved} ({Pages:N0} pages) — {Transport.Name()}, discard {Discard}, alloc {Allocation}, {Backing}")) };
        t.AddColumn("stage").AddColumn(new TableColumn("ms").RightAligned()).AddColumn(new TableColumn("share").RightAligned());
        void Row(string name, TimeSpan v) => t.AddRow(name, $"{v.TotalMilliseconds:F1}", $"{Share(v):F1} %");
        Row("a. allocating pages", Allocate);
        Row("b. sending to the host", Send);
        Row("c. address translation", Translate);
        Row("d. madvise", Madvise);
        t.AddRow("[bold]total[/]", $"[bold]{Total.TotalMilliseconds:F1}[/]", "100 %");
        t.Caption = new TableTitle(Markup.Escape(
            $"resident {ResidentBefore} → {ResidentAfter} (drop {ResidentDrop}); {Requests:N0} requests, {DiscardCalls:N0} madvise calls, " +
            $"{Refused} refused; host wall {Wall.TotalMilliseconds:F1} ms" + (Note is null ? "" : $"; {Note}")));
        return t;
    }

    public override string ToString()
        => $"balloon {Kind} {Moved} via {Transport.Name()}: total {Total.TotalMilliseconds:F1} ms (a {Allocate.TotalMilliseconds:F1}, b {Send.TotalMilliseconds:F1}, " +
           $"c {Translate.TotalMilliseconds:F1}, d {Madvise.TotalMilliseconds:F1}); resident {ResidentBefore} → {ResidentAfter}" + (Note is null ? "" : $"; {Note}");
}

/// <summary>Seed 004's table for several operations side by side, with the floor (one MADV_DONTNEED over the same memory).</summary>
public sealed record BalloonComparison(string Title, IReadOnlyList<BalloonOperation> Operations, TimeSpan Floor) : IDisplayable
{
    public IRenderable ToRenderable()
    {
        var t = new Table { Title = new TableTitle(Markup.Escape(Title)) };
        t.AddColumn("stage");
        foreach (var op in Operations) t.AddColumn(new TableColumn(Markup.Escape($"{op.Transport.Name()} ({op.Discard}, {op.Allocation})")).RightAligned());
        t.AddColumn(new TableColumn("floor: 1 × MADV_DONTNEED").RightAligned());
        string Cell(BalloonOperation op, TimeSpan v) => $"{v.TotalMilliseconds:F1} ms {op.Share(v),5:F1} %";
        void Row(string name, Func<BalloonOperation, string> cell, string floor)
            => t.AddRow([Markup.Escape(name), .. Operations.Select(o => Markup.Escape(cell(o))), Markup.Escape(floor)]);
        var f = $"{Floor.TotalMilliseconds:F1} ms";
        Row("a. allocating pages", o => Cell(o, o.Allocate), "");
        Row("b. sending to the host", o => Cell(o, o.Send), "");
        Row("c. address translation", o => Cell(o, o.Translate), "");
        Row("d. madvise", o => Cell(o, o.Madvise), f);
        Row("total", o => $"{o.Total.TotalMilliseconds:F1} ms", f);
        Row("× floor", o => Floor > TimeSpan.Zero ? $"{o.Total / Floor:F2}" : "", "1.00");
        Row("requests / madvise calls", o => $"{o.Requests:N0} / {o.DiscardCalls:N0}", "0 / 1");
        Row("resident before → after", o => $"{o.ResidentBefore} → {o.ResidentAfter}", "");
        return t;
    }
}
