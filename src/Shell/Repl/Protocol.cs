using System.Buffers.Binary;
using System.Text.Json;
using System.Text.Json.Serialization;

namespace VirtLab.Shell.Repl;

// Front end ⇄ evaluation host protocol. One Unix-domain stream socket per host; each message is a
// 4-byte little-endian length followed by that many bytes of UTF-8 JSON. The front end sends
// Requests; the host answers each with a Reply carrying the same Id. Requests are handled one at a
// time, in order, except "cancel" and "shutdown", which the host's reader answers at once, even while
// a "submit" runs.

public static class RequestKind
{
    public const string Submit = "submit";           // Code, Quiet, Width → Status, Diagnostics, Error, Output
    public const string Complete = "complete";       // Code, Position → Completions, ReplaceStart, ReplaceLength
    public const string Signature = "signature";     // Code, Position → Signatures, ActiveSignature, Parameter, ParameterDoc, Doc (none: no call)
    public const string QuickInfo = "quick-info";    // Code, Position → Info (null: nothing there)
    public const string TypeNames = "type-names";    // → Types (asked after a host's first evaluation: not on the start-up path)
    public const string Cancel = "cancel";           // cancels the running submit (RecipeGlobals.Cancellation)
    public const string PluginsInfo = "plugins-info"; // → Plugins, Globals (first one loads the plugins)
    public const string Shutdown = "shutdown";       // host replies, then exits
}

public static class SubmitStatus
{
    public const string Ok = "ok";
    public const string CompileError = "compile-error";
    public const string RuntimeError = "runtime-error";
    public const string Cancelled = "cancelled";
}

public sealed class Request
{
    public int Id { get; set; }
    public string Kind { get; set; } = "";
    public string? Code { get; set; }
    public int Position { get; set; }
    /// <summary>Replay: evaluate without rendering the value and with the script's Console output discarded.</summary>
    public bool Quiet { get; set; }
    /// <summary>Submit: the terminal's width now (0: not a terminal). The host cannot follow a resize itself: its stdin
    /// is not the terminal, so .NET never hears SIGWINCH there and keeps the width it saw first.</summary>
    public int Width { get; set; }
}

public sealed class Diagnostic
{
    public int Line { get; set; }      // 1-based, within the submission
    public int Column { get; set; }    // 1-based
    public string Severity { get; set; } = "error";
    public string Id { get; set; } = "";
    public string Message { get; set; } = "";
    public override string ToString() => $"({Line},{Column}): {Severity} {Id}: {Message}";
}

public sealed class CompletionEntry
{
    public string Text { get; set; } = "";
    public string Kind { get; set; } = "";
    /// <summary>What a menu shows (<c>passes:</c>, <c>List&lt;&gt;</c>); Text is what goes in.</summary>
    public string? Display { get; set; }
    /// <summary>Signature or type (first items only).</summary>
    public string? Detail { get; set; }
    /// <summary>Doc summary (first items only).</summary>
    public string? Doc { get; set; }
}

public sealed class PluginEntry
{
    public string Name { get; set; } = "";
    public string Version { get; set; } = "";
    /// <summary>This build of the plugin (<see cref="VirtLab.Shell.PluginHost.PluginInfo.Build"/>).</summary>
    public string Build { get; set; } = "";
    /// <summary>The SDK version it was built against, shown as everywhere (<see cref="VirtLab.Sdk.SdkVersion.Format"/>).</summary>
    public string Sdk { get; set; } = "";
    public string Global { get; set; } = "";
    public string Path { get; set; } = "";
    public string Status { get; set; } = "";
    public string? Error { get; set; }
}

public sealed class Reply
{
    public int Id { get; set; }
    public bool Ok { get; set; } = true;
    public string? Error { get; set; }
    public string? Status { get; set; }
    public List<Diagnostic>? Diagnostics { get; set; }
    public List<CompletionEntry>? Completions { get; set; }
    public int ReplaceStart { get; set; }
    public int ReplaceLength { get; set; }
    public List<PluginEntry>? Plugins { get; set; }
    /// <summary>Names the highlighter shows as known globals (plugin globals, RecipeGlobals members).</summary>
    public List<string>? Globals { get; set; }
    /// <summary>Type names in scope without qualification (the default imports and the plugins' namespaces): highlighted as types.</summary>
    public List<string>? Types { get; set; }
    public List<string>? Signatures { get; set; }
    public int ActiveSignature { get; set; }
    public string? Parameter { get; set; }
    public string? ParameterDoc { get; set; }
    public string? Doc { get; set; }
    public string? Info { get; set; }
    public double Milliseconds { get; set; }
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(Request))]
[JsonSerializable(typeof(Reply))]
internal sealed partial class ProtocolJson : JsonSerializerContext;

/// <summary>Length-prefixed JSON framing over a stream (the host socket).</summary>
internal static class Framing
{
    private const int MaxFrame = 64 << 20;

    public static async Task WriteAsync<T>(Stream stream, T message, SemaphoreSlim writeLock, CancellationToken ct = default)
    {
        var info = (System.Text.Json.Serialization.Metadata.JsonTypeInfo<T>)ProtocolJson.Default.GetTypeInfo(typeof(T))!;
        var body = JsonSerializer.SerializeToUtf8Bytes(message, info);
        var frame = new byte[4 + body.Length];
        BinaryPrimitives.WriteInt32LittleEndian(frame, body.Length);
        body.CopyTo(frame, 4);
        await writeLock.WaitAsync(ct).ConfigureAwait(false);
        try
        {
            await stream.WriteAsync(frame, ct).ConfigureAwait(false);
            await stream.FlushAsync(ct).ConfigureAwait(false);
        }
        finally { writeLock.Release(); }
    }

    /// <summary>Reads one message; null at end of stream (the peer closed or died).</summary>
    public static async Task<T?> ReadAsync<T>(Stream stream, CancellationToken ct = default) where T : class
    {
        var header = new byte[4];
        if (!await ReadExactly(stream, header, ct).ConfigureAwait(false)) return null;
        var length = BinaryPrimitives.ReadInt32LittleEndian(header);
        if (length < 0 || length > MaxFrame) throw new InvalidDataException($"bad frame length {length}");
        var body = new byte[length];
        if (!await ReadExactly(stream, body, ct).ConfigureAwait(false)) return null;
        var info = (System.Text.Json.Serialization.Metadata.JsonTypeInfo<T>)ProtocolJson.Default.GetTypeInfo(typeof(T))!;
        return JsonSerializer.Deserialize(body, info);
    }

    private static async Task<bool> ReadExactly(Stream stream, byte[] buffer, CancellationToken ct)
    {
        var read = 0;
        while (read < buffer.Length)
        {
            int n;
            try { n = await stream.ReadAsync(buffer.AsMemory(read), ct).ConfigureAwait(false); }
            catch (IOException) { return false; } // connection reset: the peer died
            if (n == 0) return false;
            read += n;
        }
        return true;
    }
}
