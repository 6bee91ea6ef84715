namespace VirtLab.Sdk;

/// <summary>
/// Where the SDK reports text that is neither a result nor an error (a guest program's print ucall without an
/// <c>onPrint</c> handler): the SDK itself never writes to the console. The host sets <see cref="Default"/> once
/// (the shell: its standard output); a run or a test can redirect its own flow with <see cref="Enter"/>, which flows
/// like <see cref="AsyncLocal{T}"/> into the threads the run starts (vCPU threads included).
/// </summary>
public static class RunLog
{
    static readonly AsyncLocal<TextWriter?> Ambient = new();
    static readonly object Gate = new();

    /// <summary>The host's writer for flows that entered none; null (the default) drops the text.</summary>
    public static TextWriter? Default { get; set; }

    /// <summary>The writer this flow reports to: the one entered, else <see cref="Default"/>.</summary>
    public static TextWriter? Current => Ambient.Value ?? Default;

    /// <summary>Report to <paramref name="writer"/> in this flow until the returned scope is disposed.</summary>
    public static IDisposable Enter(TextWriter writer)
    {
        ArgumentNullException.ThrowIfNull(writer);
        var previous = Ambient.Value;
        Ambient.Value = writer;
        return new Scope(previous);
    }

    /// <summary>Write one line (whole, even from several vCPU threads at once).</summary>
    public static void WriteLine(string line)
    {
        if (Current is not { } w) return;
        lock (Gate) w.WriteLine(line);
    }

    sealed class Scope(TextWriter? previous) : IDisposable
    {
        public void Dispose() => Ambient.Value = previous;
    }
}
