using System.Collections;
using System.Globalization;
using System.Reflection;
using System.Runtime.CompilerServices;
using System.Text;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk;
using VirtLab.Sdk.Rendering;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Shell.Rendering;

/// <summary>
/// How a value is shown in the REPL and in <c>virtlab run</c> output: <see cref="IDisplayable"/> values render
/// themselves; strings are quoted; numbers, sizes, enums and times print plainly; sequences become short
/// lists or tables; records and other objects become property tables; exceptions show type and message.
/// </summary>
public static class ValueRenderer
{
    public const int MaxRows = 20;
    public const int MaxInline = 10;
    private const int MaxDepth = 2;

    /// <summary>Writes the value and leaves the cursor at the start of a line (a script's own <c>Text</c> or
    /// <c>Markup</c> without a final newline would otherwise run into whatever is printed next).</summary>
    public static void Write(IAnsiConsole console, object? value)
    {
        // On a terminal, stage tables get an inline bar column.
        var renderable = value is VirtLab.Sdk.Measure.StageSet stages && console.Profile.Out.IsTerminal ? StageTable.WithBars(stages) : ToRenderable(value);
        console.Write(renderable);
        if (!EndsWithLineBreak(console, renderable)) console.WriteLine();
    }

    private static bool EndsWithLineBreak(IAnsiConsole console, IRenderable renderable)
    {
        try
        {
            var options = RenderOptions.Create(console, console.Profile.Capabilities);
            var last = renderable.Render(options, console.Profile.Width).LastOrDefault(s => !s.IsControlCode && (s.IsLineBreak || s.Text.Length > 0));
            return last is null || last.IsLineBreak || last.Text.EndsWith('\n');
        }
        catch (Exception) { return true; } // a renderable that cannot render twice: leave the output as it is
    }

    public static IRenderable ToRenderable(object? value) => Render(value, 0);

    /// <summary>Whether the value shows as one plain line (<see cref="Inline"/>): a number, string, size, enum, time… —
    /// decided before any renderable or machine view is built.</summary>
    public static bool IsPlain(object? value) => value is not (null or IDisplayable or IRenderable) && IsScalar(value);

    /// <summary>The SDK machine model has no UI dependency: its views come from the SDK's adapter (<see cref="MachineDisplay"/>).</summary>
    private static IRenderable? MachineView(object value)
    {
        try { return MachineDisplay.TryRender(value, out var shown) ? shown : null; }
        catch (Exception e) { return new Markup($"[red]{Markup.Escape($"showing a {value.GetType().Name} threw {e.GetType().Name}: {e.Message}")}[/]\n"); }
    }

    private static IRenderable Render(object? value, int depth)
    {
        switch (value)
        {
            case null: return new Markup("[grey]null[/]\n");
            case IDisplayable d:
                try { return d.ToRenderable(); }
                catch (Exception e) { return new Markup($"[red]{Markup.Escape($"{d.GetType().Name}.ToRenderable() threw {e.GetType().Name}: {e.Message}")}[/]\n"); }
            case IRenderable r: return r;
            case var scalar when IsScalar(scalar): return new Text(Inline(scalar) + "\n");
            case var model when MachineView(model) is { } view: return view;
            case Exception e: return new Markup($"[red]{Markup.Escape(e.GetType().FullName + ": " + e.Message)}[/]\n");
        }
        if (value is IDictionary dict && depth < MaxDepth) return DictionaryTable(dict, depth);
        if (value is IEnumerable seq && depth < MaxDepth) return Sequence(seq, depth);
        var props = Properties(value.GetType());
        if (props.Length == 0 || depth >= MaxDepth || HasOwnToString(value.GetType()) && !IsRecord(value.GetType()))
            return new Text(Inline(value) + "\n");
        var table = new Table().Border(TableBorder.Rounded).Title(Markup.Escape(TypeName(value.GetType())))
            .AddColumn("[bold]Property[/]").AddColumn("[bold]Value[/]");
        foreach (var p in props) table.AddRow(new Text(p.Name), new Text(Inline(Get(p, value))));
        return table;
    }

    private static IRenderable DictionaryTable(IDictionary dict, int depth)
    {
        var table = new Table().Border(TableBorder.Rounded).AddColumn("[bold]Key[/]").AddColumn("[bold]Value[/]");
        int n = 0;
        foreach (DictionaryEntry e in dict)
        {
            if (n++ == MaxRows) { table.AddRow("…", $"{dict.Count - MaxRows} more"); break; }
            table.AddRow(new Text(Inline(e.Key)), new Text(Inline(e.Value)));
        }
        if (n == 0) return new Text("{} (empty)\n");
        return table;
    }

    private static IRenderable Sequence(IEnumerable seq, int depth)
    {
        var items = new List<object?>();
        bool more = false;
        foreach (var item in seq)
        {
            if (items.Count == MaxRows) { more = true; break; }
            items.Add(item);
        }
        var elementType = ElementType(seq.GetType(), items);
        if (items.Count == 0 || elementType is null || IsScalarType(elementType) || Properties(elementType).Length == 0
            || HasOwnToString(elementType) && !IsRecord(elementType))
            return new Text(Inline(seq) + "\n");
        var props = Properties(elementType);
        var table = new Table().Border(TableBorder.Rounded);
        foreach (var p in props) table.AddColumn(new TableColumn("[bold]" + Markup.Escape(p.Name) + "[/]"));
        foreach (var item in items)
            table.AddRow(props.Select(p => (IRenderable)new Text(item is null ? "null" : Inline(Get(p, item)))).ToArray());
        if (more) table.Caption($"first {MaxRows} items");
        return table;
    }

    /// <summary>A one-line form of any value (table cells, list elements).</summary>
    public static string Inline(object? value, int depth = 0)
    {
        switch (value)
        {
            case null: return "null";
            case string s: return Quote(s);
            case char c: return c == '\'' ? "'\\''" : "'" + Escape(c.ToString(), '\'') + "'";
            case bool b: return b ? "true" : "false";
            case Size size: return size.ToString();
            case Enum e: return e.GetType().Name + "." + e;
            case IFormattable f when IsScalar(value): return f.ToString(null, CultureInfo.InvariantCulture);
            case Exception ex: return ex.GetType().Name + ": " + ex.Message;
            case ITuple t when value.GetType().IsValueType:
                return "(" + string.Join(", ", Enumerable.Range(0, t.Length).Select(i => Inline(t[i], depth + 1))) + ")";
            case IEnumerable seq when depth < MaxDepth:
                var sb = new StringBuilder("[");
                int n = 0, total = 0;
                foreach (var item in seq)
                {
                    total++;
                    if (n < MaxInline) { if (n++ > 0) sb.Append(", "); sb.Append(Inline(item, depth + 1)); }
                }
                if (total > MaxInline) sb.Append(", … (").Append(total).Append(" items)");
                return sb.Append(']').ToString();
        }
        try { return value.ToString() ?? ""; }
        catch (Exception e) { return $"<ToString threw {e.GetType().Name}>"; }
    }

    public static string Quote(string s) => "\"" + Escape(s, '"') + "\"";

    private static string Escape(string s, char quote)
    {
        var sb = new StringBuilder(s.Length);
        foreach (var c in s)
            sb.Append(c switch
            {
                '\\' => "\\\\", '\n' => "\\n", '\r' => "\\r", '\t' => "\\t", '\0' => "\\0",
                _ when c == quote => "\\" + c,
                _ when char.IsControl(c) => $"\\u{(int)c:x4}",
                _ => c.ToString(),
            });
        return sb.ToString();
    }

    private static bool IsScalar(object value) => IsScalarType(value.GetType());

    private static bool IsScalarType(Type t) =>
        t.IsPrimitive || t.IsEnum || t == typeof(string) || t == typeof(decimal) || t == typeof(Size) || t == typeof(DateTime)
        || t == typeof(DateTimeOffset) || t == typeof(TimeSpan) || t == typeof(Guid) || t == typeof(Version) || t == typeof(Uri)
        || Nullable.GetUnderlyingType(t) is { } u && IsScalarType(u);

    private static PropertyInfo[] Properties(Type t) =>
        t.GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.GetIndexParameters().Length == 0 && p.GetMethod is not null && p.Name != "EqualityContract").ToArray();

    private static object? Get(PropertyInfo p, object target)
    {
        try { return p.GetValue(target); }
        catch (TargetInvocationException e) { return $"<threw {e.InnerException?.GetType().Name}>"; }
    }

    private static bool IsRecord(Type t) => t.GetMethod("<Clone>$") is not null || t.GetMethod("PrintMembers", BindingFlags.NonPublic | BindingFlags.Instance) is not null;

    private static bool HasOwnToString(Type t) =>
        t.GetMethod("ToString", Type.EmptyTypes)?.DeclaringType is { } d && d != typeof(object) && d != typeof(ValueType);

    private static Type? ElementType(Type seqType, List<object?> items)
    {
        var e = seqType.GetInterfaces().Append(seqType)
            .FirstOrDefault(i => i.IsGenericType && i.GetGenericTypeDefinition() == typeof(IEnumerable<>))?.GetGenericArguments()[0];
        if (e is not null && e != typeof(object)) return e;
        var types = items.Where(i => i is not null).Select(i => i!.GetType()).Distinct().ToList();
        return types.Count == 1 ? types[0] : null;
    }

    private static string TypeName(Type t)
    {
        if (!t.IsGenericType) return t.Name;
        var name = t.Name[..t.Name.IndexOf('`')];
        return name + "<" + string.Join(", ", t.GetGenericArguments().Select(TypeName)) + ">";
    }
}

/// <summary>Spectre consoles that behave when output is redirected: no ANSI sequences unless forced
/// (VIRTLAB_COLOR=always), none with NO_COLOR, a fixed width so tables don't wrap at 80.</summary>
/// <remarks>Spectre's profile enrichers (CI vendors' environment variables) are off: every setting they would adjust is
/// decided here, and their scan of the whole environment cost a cached run ~3 ms of JIT. Each console is made on first
/// use (a run that prints nothing to stderr never builds the stderr one).</remarks>
public static class Consoles
{
    public static IAnsiConsole Create(TextWriter writer, bool isTerminal)
    {
        var force = Environment.GetEnvironmentVariable("VIRTLAB_COLOR");
        bool noColor = Environment.GetEnvironmentVariable("NO_COLOR") is { Length: > 0 } || force == "never";
        bool ansi = !noColor && (isTerminal || force == "always");
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Ansi = ansi ? AnsiSupport.Yes : AnsiSupport.No,
            ColorSystem = ansi ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = InteractionSupport.No,
            Out = new AnsiConsoleOutput(writer),
            Enrichment = new ProfileEnrichment { UseDefaultEnrichers = false },
            EnvironmentVariables = [],
        });
        if (!isTerminal) console.Profile.Width = 120;
        return console;
    }

    public static IAnsiConsole Out => OutHolder.Console;
    public static IAnsiConsole Error => ErrorHolder.Console;

    // The writers the consoles are made on, taken when the run binds them (a recipe may point Console.Out elsewhere
    // before the first table is drawn); else whatever Console.Out is at first use.
    private static TextWriter? _out, _error;

    /// <summary>The writer <see cref="Out"/> writes to: plain lines go here, in order with the tables.</summary>
    public static TextWriter OutWriter => _out ?? Console.Out;

    /// <summary>Takes the process's stdout and stderr writers for the consoles now and binds Spectre's static
    /// <c>AnsiConsole</c> to <see cref="Out"/> without building it yet: a recipe that never writes through Spectre does
    /// not pay for the console (~4 ms of a cached run).</summary>
    public static void BindAnsiConsole()
    {
        _out ??= Console.Out;
        _error ??= Console.Error;
        AnsiConsole.Console = new Deferred(() => Out);
    }

    private sealed class Deferred(Func<IAnsiConsole> make) : IAnsiConsole
    {
        private IAnsiConsole Real => field ??= make();
        public Profile Profile => Real.Profile;
        public IAnsiConsoleCursor Cursor => Real.Cursor;
        public IAnsiConsoleInput Input => Real.Input;
        public IExclusivityMode ExclusivityMode => Real.ExclusivityMode;
        public RenderPipeline Pipeline => Real.Pipeline;
        public void Clear(bool home) => Real.Clear(home);
        public void Write(IRenderable renderable) => Real.Write(renderable);
    }

    private static class OutHolder { public static readonly IAnsiConsole Console = Create(_out ?? System.Console.Out, !System.Console.IsOutputRedirected); }
    private static class ErrorHolder { public static readonly IAnsiConsole Console = Create(_error ?? System.Console.Error, !System.Console.IsErrorRedirected); }
}
