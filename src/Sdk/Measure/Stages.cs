using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace VirtLab.Sdk.Measure;

/// <summary>One stage as recorded: total time over its runs, counters summed over its runs.
/// <see cref="Parent"/> names the enclosing stage when stages nest (null at top level).</summary>
public sealed record StageRecord(string Name, double Seconds, IReadOnlyDictionary<string, long> Counters)
{
    /// <summary>How many times the stage completed (a stage run in a loop accumulates into one record).</summary>
    public int Runs { get; init; } = 1;

    /// <summary>The enclosing stage's name, for a nested one.</summary>
    [JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public string? Parent { get; init; }

    /// <summary>Nesting depth (0 for a top-level stage).</summary>
    [JsonIgnore] public int Depth { get; init; }
}

/// <summary>
/// A table of timed stages, for recipes (through <see cref="RecipeGlobals.Stage(string)"/>) and for plugins
/// that time their own work and return it (allocate / send / translate / madvise). Time is taken on the
/// monotonic clock (<see cref="Stopwatch.GetTimestamp"/>). A stage started while another one of the same set
/// is open in the same async flow nests under it; a name run again at the same place accumulates.
/// Thread-safe. Renders as a table (<see cref="IDisplayable"/>); serializes to JSON as its records.
/// </summary>
[JsonConverter(typeof(StageSetJsonConverter))]
public sealed class StageSet : IDisplayable
{
    private readonly Lock _lock = new();
    private readonly List<StageEntry> _entries = [];
    private readonly AsyncLocal<StageTimer?> _current = new();

    /// <summary>An empty stage table with an optional title.</summary>
    public StageSet(string? title = null) => Title = title;

    /// <summary>Shown above the table, e.g. "balloon inflate 768 MiB".</summary>
    public string? Title { get; set; }

    /// <summary>Starts a stage; dispose the result to stop it: <c>using var s = stages.Start("populate");</c></summary>
    public StageTimer Start(string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        var parent = _current.Value;
        StageEntry entry;
        lock (_lock) entry = GetOrAdd(name, parent?.StageEntry);
        var timer = new StageTimer(this, entry, parent);
        _current.Value = timer;
        return timer;
    }

    /// <summary>Times <paramref name="body"/> as stage <paramref name="name"/>.</summary>
    public void Time(string name, Action body)
    {
        ArgumentNullException.ThrowIfNull(body);
        using (Start(name)) body();
    }

    /// <summary>Times <paramref name="body"/> as stage <paramref name="name"/> and returns its value.</summary>
    public T Time<T>(string name, Func<T> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        // An async lambda binds here (T = Task); timing it synchronously would stop the clock at its first await.
        if (typeof(Task).IsAssignableFrom(typeof(T)) || typeof(T) == typeof(ValueTask) || typeof(T).IsGenericType && typeof(T).GetGenericTypeDefinition() == typeof(ValueTask<>))
            throw new ArgumentException($"stage '{name}': the body is async; use StageAsync (await StageAsync(\"{name}\", async () => ...))", nameof(body));
        using (Start(name)) return body();
    }

    /// <summary>Times the task <paramref name="body"/> returns as stage <paramref name="name"/>.</summary>
    public async Task TimeAsync(string name, Func<Task> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        using (Start(name)) await body().ConfigureAwait(false);
    }

    /// <summary>Times the task <paramref name="body"/> returns as stage <paramref name="name"/> and returns its value.</summary>
    public async Task<T> TimeAsync<T>(string name, Func<Task<T>> body)
    {
        ArgumentNullException.ThrowIfNull(body);
        using (Start(name)) return await body().ConfigureAwait(false);
    }

    /// <summary>Adds to a counter of the innermost stage open in this async flow.</summary>
    /// <exception cref="InvalidOperationException">No stage of this set is open here.</exception>
    public void Count(string counter, long n = 1)
    {
        var t = _current.Value ?? throw new InvalidOperationException(
            $"Count(\"{counter}\") outside a stage: call it inside Stage(name, ...) or on the scope of 'using var s = Stage(name)'");
        t.Count(counter, n);
    }

    /// <summary>The innermost stage open in this async flow, if any.</summary>
    public StageTimer? Current => _current.Value;

    /// <summary>Records time measured elsewhere (e.g. per vCPU), nested under the current stage if one is open.</summary>
    public void Record(string name, TimeSpan elapsed, IEnumerable<KeyValuePair<string, long>>? counters = null)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        lock (_lock)
        {
            var e = GetOrAdd(name, _current.Value?.StageEntry);
            e.Ticks += (long)(elapsed.TotalSeconds * Stopwatch.Frequency);
            e.Runs++;
            foreach (var (k, v) in counters ?? []) AddCounter(e, k, v);
        }
    }

    /// <summary>Copies another set's stages in (e.g. the stage table a plugin call returned), under the current stage if one is open.</summary>
    public void Include(StageSet other)
    {
        ArgumentNullException.ThrowIfNull(other);
        if (ReferenceEquals(other, this)) throw new ArgumentException("a stage set cannot include itself", nameof(other));
        // Snapshot first: holding both locks at once could deadlock against an Include the other way round.
        (StageEntry Src, long Ticks, int Runs, KeyValuePair<string, long>[] Counters)[] theirs;
        lock (other._lock) theirs = other._entries.Select(e => (e, e.Ticks, e.Runs, e.Counters.ToArray())).ToArray();
        var under = _current.Value?.StageEntry;
        lock (_lock)
        {
            var map = new Dictionary<StageEntry, StageEntry>();
            foreach (var (src, ticks, runs, counters) in theirs) // parents precede children, so map has the parent
            {
                var dst = GetOrAdd(src.Name, src.Parent is null ? under : map[src.Parent]);
                map[src] = dst;
                dst.Ticks += ticks;
                dst.Runs += runs;
                foreach (var (k, v) in counters) AddCounter(dst, k, v);
            }
        }
    }

    /// <summary>Stages in the order they were first started, parents before their children. Time and runs count completed
    /// runs only: a stage still open shows its counters but Runs 0.</summary>
    public IReadOnlyList<StageRecord> Records
    {
        get
        {
            lock (_lock)
                return _entries.Select(e => new StageRecord(e.Name, e.Ticks / (double)Stopwatch.Frequency,
                    new Dictionary<string, long>(e.Counters, StringComparer.Ordinal))
                { Runs = e.Runs, Parent = e.Parent?.Name, Depth = e.Depth }).ToList();
        }
    }

    /// <summary>The first record with this name (any depth), or null.</summary>
    public StageRecord? this[string name] => Records.FirstOrDefault(r => r.Name == name);

    /// <summary>Sum of the top-level stages (nested ones are inside their parents' time).</summary>
    public double TotalSeconds => Records.Where(r => r.Parent is null).Sum(r => r.Seconds);

    /// <summary>No stage has been timed.</summary>
    public bool IsEmpty { get { lock (_lock) return _entries.Count == 0; } }

    /// <inheritdoc/>
    public IRenderable ToRenderable()
    {
        var records = Records;
        var total = records.Where(r => r.Parent is null).Sum(r => r.Seconds);
        var table = new Table().Border(TableBorder.Rounded);
        if (Title is not null) table.Title(Markup.Escape(Title));
        table.AddColumn("stage");
        table.AddColumn(new TableColumn("ms").RightAligned());
        table.AddColumn(new TableColumn("share").RightAligned());
        table.AddColumn("counters");
        foreach (var r in records)
            table.AddRow(Markup.Escape(Indent(r)), FormatMs(r.Seconds), FormatShare(r.Seconds, total), Markup.Escape(FormatCounters(r)));
        if (records.Count > 1)
            table.AddRow("[bold]total[/]", $"[bold]{FormatMs(total)}[/]", "", "");
        return table;
    }

    /// <summary>The same table as plain aligned text.</summary>
    public override string ToString()
    {
        var records = Records;
        var total = records.Where(r => r.Parent is null).Sum(r => r.Seconds);
        var rows = records.Select(r => new[] { Indent(r), FormatMs(r.Seconds), FormatShare(r.Seconds, total), FormatCounters(r) }).ToList();
        rows.Insert(0, ["stage", "ms", "share", "counters"]);
        if (records.Count > 1) rows.Add(["total", FormatMs(total), "", ""]);
        var w = Enumerable.Range(0, 3).Select(c => rows.Max(row => row[c].Length)).ToArray();
        var sb = new StringBuilder();
        if (Title is not null) sb.AppendLine(Title);
        foreach (var row in rows)
            sb.Append(row[0].PadRight(w[0])).Append("  ").Append(row[1].PadLeft(w[1])).Append("  ")
              .Append(row[2].PadLeft(w[2])).Append("  ").AppendLine(row[3].TrimEnd());
        return sb.ToString().TrimEnd();
    }

    internal void Stop(StageTimer timer, long ticks)
    {
        lock (_lock)
        {
            timer.StageEntry.Ticks += ticks;
            timer.StageEntry.Runs++;
        }
        // Only the flow that opened the stage sees it as current; restore its parent there.
        if (_current.Value == timer)
        {
            var p = timer.Parent;
            while (p is { IsStopped: true }) p = p.Parent;
            _current.Value = p;
        }
    }

    internal void AddCounter(StageTimer timer, string counter, long n)
    {
        lock (_lock) AddCounter(timer.StageEntry, counter, n);
    }

    private static void AddCounter(StageEntry e, string counter, long n)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(counter);
        e.Counters[counter] = e.Counters.TryGetValue(counter, out var v) ? checked(v + n) : n;
    }

    private StageEntry GetOrAdd(string name, StageEntry? parent)
    {
        foreach (var e in _entries)
            if (e.Parent == parent && e.Name == name) return e;
        var added = new StageEntry(name, parent);
        // Keep children right after their parent's subtree so the table reads as a tree.
        int at = _entries.Count;
        if (parent is not null)
        {
            at = _entries.IndexOf(parent) + 1;
            while (at < _entries.Count && IsUnder(_entries[at], parent)) at++;
        }
        _entries.Insert(at, added);
        return added;
    }

    private static bool IsUnder(StageEntry e, StageEntry ancestor)
    {
        for (var p = e.Parent; p is not null; p = p.Parent)
            if (p == ancestor) return true;
        return false;
    }

    private static string Indent(StageRecord r) => new string(' ', 2 * r.Depth) + r.Name + (r.Runs > 1 ? $" ×{r.Runs}" : "");

    private static string FormatMs(double seconds)
    {
        var ms = seconds * 1000;
        return ms.ToString(ms < 10 ? "0.000" : ms < 1000 ? "0.0" : "#,0", CultureInfo.InvariantCulture);
    }

    private static string FormatShare(double seconds, double total) =>
        total > 0 ? (seconds / total * 100).ToString("0.0", CultureInfo.InvariantCulture) + " %" : "";

    private static string FormatCounters(StageRecord r) => string.Join(", ", r.Counters.Select(c =>
        $"{c.Key} {c.Value.ToString("#,0", CultureInfo.InvariantCulture)}" +
        (r.Seconds > 0 ? $" ({Rate.Format(c.Value / r.Seconds, "").TrimEnd()}/s)" : "")));
}

/// <summary>
/// An open stage. Dispose stops the clock and adds the elapsed time to the stage's record.
/// Counters go to the stage's record at once (also after the stage stopped).
/// </summary>
public sealed class StageTimer : IDisposable
{
    private readonly StageSet _set;
    private readonly long _start = Stopwatch.GetTimestamp();
    private long _end;

    internal StageTimer(StageSet set, StageEntry entry, StageTimer? parent)
    {
        _set = set;
        StageEntry = entry;
        Parent = parent;
    }

    internal StageEntry StageEntry { get; }
    internal StageTimer? Parent { get; }
    internal bool IsStopped => Interlocked.Read(ref _end) != 0;

    /// <summary>The stage's name.</summary>
    public string Name => StageEntry.Name;

    /// <summary>Time since start, or the stage's duration once stopped.</summary>
    public TimeSpan Elapsed
    {
        get
        {
            var end = Interlocked.Read(ref _end);
            return Stopwatch.GetElapsedTime(_start, end != 0 ? end : Stopwatch.GetTimestamp());
        }
    }

    /// <summary>Adds <paramref name="n"/> to a counter of this stage: <c>s.Count("pages", n)</c>.</summary>
    public StageTimer Count(string counter, long n = 1)
    {
        _set.AddCounter(this, counter, n);
        return this;
    }

    /// <inheritdoc/>
    public void Dispose()
    {
        var now = Stopwatch.GetTimestamp();
        if (Interlocked.CompareExchange(ref _end, now, 0) != 0) return;
        _set.Stop(this, now - _start);
    }
}

internal sealed class StageEntry(string name, StageEntry? parent)
{
    public readonly string Name = name;
    public readonly StageEntry? Parent = parent;
    public readonly int Depth = parent is null ? 0 : parent.Depth + 1;
    public long Ticks;
    public int Runs;
    public readonly OrderedDictionary<string, long> Counters = new(StringComparer.Ordinal);
}

internal sealed class StageSetJsonConverter : JsonConverter<StageSet>
{
    public override StageSet Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options) =>
        throw new NotSupportedException("a StageSet is written to JSON, not read back; read List<StageRecord> instead");

    public override void Write(Utf8JsonWriter writer, StageSet value, JsonSerializerOptions options) =>
        JsonSerializer.Serialize(writer, value.Records, options);
}
