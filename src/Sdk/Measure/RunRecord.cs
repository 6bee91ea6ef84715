using System.Diagnostics;
using System.Security.Cryptography;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;

namespace VirtLab.Sdk.Measure;

/// <summary>The recipe file a run executed.</summary>
public sealed record RecipeInfo(string Path, string Sha256)
{
    /// <summary>Full path and SHA-256 (lowercase hex) of the file's bytes.</summary>
    public static RecipeInfo FromFile(string path)
    {
        var full = System.IO.Path.GetFullPath(path);
        using var f = File.OpenRead(full);
        return new RecipeInfo(full, Convert.ToHexStringLower(SHA256.HashData(f)));
    }
}

/// <summary>
/// What <c>virtlab run --json PATH</c> writes: the recipe, its arguments, the environment, stages, expectations,
/// results and the exit code. JSON is camelCase and indented; sizes are byte counts; times are seconds.
/// </summary>
public sealed record RunRecord
{
    /// <summary>The recipe file that ran.</summary>
    public required RecipeInfo Recipe { get; init; }
    /// <summary>Options in effect, name → value text (given ones and the defaults the recipe read); parses back with the same recipe.</summary>
    public required IReadOnlyDictionary<string, string?> Args { get; init; }
    /// <summary>The argument tokens exactly as given.</summary>
    public required IReadOnlyList<string> Argv { get; init; }
    /// <summary>Whether the run used the test sizes.</summary>
    public bool TestMode { get; init; }
    /// <summary>Host, kernel, shell and plugin versions.</summary>
    public required EnvironmentInfo Environment { get; init; }
    /// <summary>Stage times, in start order.</summary>
    public required IReadOnlyList<StageRecord> Stages { get; init; }
    /// <summary>Expectations, in order.</summary>
    public required IReadOnlyList<Expectation> Expectations { get; init; }
    /// <summary>name → the value as JSON; a value System.Text.Json cannot write is stored as its ToString().</summary>
    public required IReadOnlyDictionary<string, JsonNode?> Results { get; init; }
    /// <summary>The process exit code (see the shell's exit codes).</summary>
    public int ExitCode { get; init; }
    /// <summary>The exception that ended the run ("Type: message"), if one did.</summary>
    public string? Error { get; init; }
    /// <summary>When the run started.</summary>
    public DateTimeOffset StartedAt { get; init; }
    /// <summary>Duration of the run in seconds.</summary>
    public double DurationSeconds { get; init; }
    /// <summary>The charts <c>--plots DIR</c> wrote (stage times, per-iteration series, the recipe's own Plot calls).</summary>
    public IReadOnlyList<PlotFile>? Plots { get; init; }
    /// <summary>NuGet packages the recipe pulled in with <c>#r "nuget: Name, Version"</c>, with their resolved dependency
    /// closure, each "Name/Version" (null: none).</summary>
    public IReadOnlyList<string>? Packages { get; init; }
    /// <summary>With <c>--repeat N</c>: the spread of every stage and numeric result, and each repetition's record.</summary>
    public RepeatSummary? Repeat { get; init; }

    /// <summary>How run records are (de)serialised: camelCase, indented, enums as names.</summary>
    public static JsonSerializerOptions JsonOptions { get; } = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull,
        // NaN from a 0-second rate must not make the whole record unwritable.
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
        Converters = { new JsonStringEnumConverter() },
    };

    /// <summary>Builds the record of a finished run; duration is measured on the monotonic clock from the context's start.</summary>
    /// <param name="context">The run's state: stages, expectations, results, arguments.</param>
    /// <param name="recipe">The recipe file that ran.</param>
    /// <param name="environment">Host, kernel, shell and plugin versions at the time of the run.</param>
    /// <param name="error">The exception that ended the script, if any; also decides <see cref="ExitCode"/> unless <paramref name="exitCode"/> is given.</param>
    /// <param name="exitCode">The exit code to record, when the caller decided it.</param>
    public static RunRecord Create(RecipeContext context, RecipeInfo recipe, EnvironmentInfo environment, Exception? error = null, int? exitCode = null)
    {
        ArgumentNullException.ThrowIfNull(context);
        error = RecipeContext.Unwrap(error);
        var results = new Dictionary<string, JsonNode?>(StringComparer.Ordinal);
        foreach (var r in context.Results) results[r.Name] = ToJson(r.Value);
        return new RunRecord
        {
            Recipe = recipe,
            Args = context.EffectiveArgs,
            Argv = context.Args.Raw,
            TestMode = context.TestMode,
            Environment = environment,
            Stages = context.Stages.Records,
            Expectations = context.Expectations,
            Results = results,
            ExitCode = exitCode ?? context.ExitCodeFor(error),
            Error = error is null ? null : $"{error.GetType().Name}: {error.Message}",
            StartedAt = context.StartedAt,
            DurationSeconds = Stopwatch.GetElapsedTime(context.StartTimestamp).TotalSeconds,
        };
    }

    /// <summary>The record as JSON.</summary>
    public string ToJson() => JsonSerializer.Serialize(this, JsonOptions);

    /// <summary>Reads a record written by <see cref="ToJson()"/> (e.g. to compare runs).</summary>
    public static RunRecord Parse(string json) =>
        JsonSerializer.Deserialize<RunRecord>(json, JsonOptions) ?? throw new JsonException("the run record is null");

    /// <summary>Writes the JSON to <paramref name="path"/> (creating its folder), via a temporary file so a reader never sees half a record.</summary>
    public void Write(string path)
    {
        var full = Path.GetFullPath(path);
        Directory.CreateDirectory(Path.GetDirectoryName(full)!);
        var tmp = full + ".tmp";
        File.WriteAllText(tmp, ToJson() + "\n");
        File.Move(tmp, full, overwrite: true);
    }

    private static JsonNode? ToJson(object? value)
    {
        if (value is null) return null;
        try { return JsonSerializer.SerializeToNode(value, value.GetType(), JsonOptions); }
        catch (Exception) // best effort: a getter may throw, a graph may cycle
        {
            return JsonValue.Create(value.ToString());
        }
    }
}
