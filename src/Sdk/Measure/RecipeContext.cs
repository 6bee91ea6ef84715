namespace VirtLab.Sdk.Measure;

/// <summary>Something the recipe needs is missing on this machine (e.g. /dev/kvm): exit 4, "skipped" under <c>virtlab test</c>.</summary>
public class RequirementMissingException(string reason)
    : Exception(string.IsNullOrWhiteSpace(reason) ? "a requirement of the recipe is missing (Require was given no reason)" : reason)
{
    /// <summary>Why the recipe cannot run here.</summary>
    public string Reason => Message;
}

/// <summary>An expectation a recipe stated: <c>Expect(cond, "what should hold")</c>.</summary>
public sealed record Expectation(string Text, bool Passed);

/// <summary>A named value a recipe reported with <c>Result(name, value)</c>.</summary>
public sealed record RecipeResult(string Name, object? Value);

/// <summary>
/// The state of one recipe run (or one REPL session): arguments, test mode, stages, expectations and results.
/// <see cref="RecipeGlobals"/> is the script-facing view of it; the shell keeps the context to write the run record
/// and pick the exit code after the script ends. Thread-safe.
/// </summary>
public sealed class RecipeContext
{
    private readonly Lock _lock = new();
    private readonly List<Expectation> _expectations = [];
    private readonly List<RecipeResult> _results = [];
    private readonly Dictionary<string, string?> _effectiveArgs = new(StringComparer.OrdinalIgnoreCase);
    private readonly List<string> _effectiveOrder = [];

    /// <summary>A run's state for <paramref name="args"/>; <paramref name="testMode"/> selects the small test sizes.</summary>
    public RecipeContext(RecipeArgs? args = null, bool testMode = false, CancellationToken cancellation = default)
    {
        Args = args ?? RecipeArgs.Empty;
        TestMode = testMode;
        Cancellation = cancellation;
    }

    /// <summary>The recipe's arguments.</summary>
    public RecipeArgs Args { get; }

    /// <summary>Under <c>virtlab test</c>: recipes use their small test-mode defaults.</summary>
    public bool TestMode { get; }

    /// <summary>Cancelled on Ctrl+C. Settable so the REPL host can hand each submission a fresh token.</summary>
    public CancellationToken Cancellation { get; set; }

    /// <summary>The stage table.</summary>
    public StageSet Stages { get; } = new();

    /// <summary>The charts the recipe asked for with <c>Plot(...)</c>; the shell renders them.</summary>
    public PlotSet Plots { get; } = new();

    /// <summary>Wall-clock start, for the run record.</summary>
    public DateTimeOffset StartedAt { get; } = DateTimeOffset.UtcNow;

    /// <summary>Monotonic start (<see cref="System.Diagnostics.Stopwatch.GetTimestamp"/>), for the run's duration.</summary>
    public long StartTimestamp { get; } = System.Diagnostics.Stopwatch.GetTimestamp();

    /// <summary>Where a failed expectation is reported the moment it fails. Defaults to stderr; null = silent.</summary>
    public TextWriter? Log { get; set; } = Console.Error;

    /// <summary>How <see cref="RecipeGlobals.Show{T}(T)"/> displays a value; the shell installs its renderer.</summary>
    public Action<object?> Show { get; set; } = v => Console.WriteLine(v);

    /// <summary>Expectations recorded so far, in order.</summary>
    public IReadOnlyList<Expectation> Expectations { get { lock (_lock) return _expectations.ToArray(); } }

    /// <summary>Results in the order first reported; reporting a name again replaces its value.</summary>
    public IReadOnlyList<RecipeResult> Results { get { lock (_lock) return _results.ToArray(); } }

    /// <summary>Whether every expectation passed (true when there are none).</summary>
    public bool AllExpectationsPassed { get { lock (_lock) return _expectations.TrueForAll(e => e.Passed); } }

    /// <summary>
    /// Every option given plus every argument the recipe read, with the value in effect (defaults included),
    /// written so it parses back. This is what the run record stores as <c>args</c>.
    /// </summary>
    public IReadOnlyDictionary<string, string?> EffectiveArgs
    {
        get
        {
            lock (_lock)
            {
                var all = new Dictionary<string, string?>(StringComparer.OrdinalIgnoreCase);
                foreach (var (k, v) in Args) all[k] = v;
                foreach (var k in _effectiveOrder) all[k] = _effectiveArgs[k];
                return all;
            }
        }
    }

    /// <summary>Options given on the command line that the recipe never read (likely typos); the shell may warn.</summary>
    public IReadOnlyList<string> UnreadArgs { get { lock (_lock) return Args.Keys.Where(k => !_effectiveArgs.ContainsKey(k)).ToArray(); } }

    /// <summary>
    /// The typed value of <c>--name</c>: the given text parsed as <typeparamref name="T"/>, else <paramref name="testDefault"/>
    /// in test mode (when <paramref name="hasTestDefault"/>), else <paramref name="default"/>.
    /// </summary>
    /// <exception cref="RecipeArgumentException">The text does not parse as <typeparamref name="T"/>.</exception>
    public T Arg<T>(string name, T @default, T testDefault, bool hasTestDefault)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        if (!ArgParser.IsSupported(typeof(T)))
            throw new NotSupportedException($"Arg<{typeof(T).Name}>(\"{name}\"): unsupported type; use {ArgParser.SupportedTypes}");
        var key = RecipeArgs.Normalize(name);
        T value;
        if (!Args.TryGetValue(key, out var text))
            value = TestMode && hasTestDefault ? testDefault : @default;
        else if (text is null)
        {
            // A bare "--flag": true for bools, a usage error for anything that needs a value.
            var u = Nullable.GetUnderlyingType(typeof(T)) ?? typeof(T);
            if (u != typeof(bool)) throw Bad(key, text, $"--{key}: needs a value ({ArgParser.Describe(typeof(T))})");
            value = (T)(object)true;
        }
        else if (ArgParser.TryParse(typeof(T), text, out var parsed, out var error))
            value = (T)parsed!;
        else
            throw Bad(key, text, $"--{key}: {error}");

        lock (_lock)
        {
            if (!_effectiveArgs.ContainsKey(key)) _effectiveOrder.Add(key);
            _effectiveArgs[key] = ArgParser.Format(value);
        }
        return value;
    }

    /// <summary>A bad value still counts as read: the shell must not also warn that the recipe never read it.</summary>
    private RecipeArgumentException Bad(string key, string? text, string message)
    {
        lock (_lock)
        {
            if (!_effectiveArgs.ContainsKey(key)) _effectiveOrder.Add(key);
            _effectiveArgs[key] = text;
        }
        return new RecipeArgumentException(message);
    }

    /// <summary>Records an expectation; a failed one is reported on <see cref="Log"/> and makes the run exit 1 at the end.</summary>
    public bool Expect(bool condition, string what)
    {
        ArgumentNullException.ThrowIfNull(what);
        lock (_lock) _expectations.Add(new Expectation(what, condition));
        if (!condition) Log?.WriteLine($"expectation failed: {what}");
        return condition;
    }

    /// <summary>Records a result (replacing one of the same name).</summary>
    public void Result(string name, object? value)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        lock (_lock)
        {
            int i = _results.FindIndex(r => r.Name == name);
            if (i >= 0) _results[i] = new RecipeResult(name, value);
            else _results.Add(new RecipeResult(name, value));
        }
    }

    /// <summary>
    /// The exit code of a run that ended with <paramref name="error"/> (null = the script completed):
    /// 4 requirement missing, 3 bad recipe argument, 1 other exception or a failed expectation, else 0.
    /// Compile errors (2) are the shell's to report.
    /// </summary>
    public int ExitCodeFor(Exception? error) => Unwrap(error) switch
    {
        RequirementMissingException or Machine.InsufficientHugePagesException => 4,
        RecipeArgumentException => 3,
        null => AllExpectationsPassed ? 0 : 1,
        _ => 1,
    };

    /// <summary>The exception a script really threw, without <see cref="System.Reflection.TargetInvocationException"/>
    /// and single-exception <see cref="AggregateException"/> wrappers (<c>Task.Wait()</c>, reflection).</summary>
    public static Exception? Unwrap(Exception? e)
    {
        while (e is AggregateException { InnerExceptions.Count: 1 } or System.Reflection.TargetInvocationException && e.InnerException is not null)
            e = e.InnerException;
        return e;
    }
}
