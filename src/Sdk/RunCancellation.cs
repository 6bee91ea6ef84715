namespace VirtLab.Sdk;

/// <summary>
/// The ambient cancellation of the run the calling code belongs to: the shell sets it for the duration of a recipe
/// (<c>virtlab run</c>) or of a REPL submission, and Ctrl+C cancels it. Every SDK call that can run long
/// (<c>Vm.Run</c>, <c>RunAssembly</c>, large populates and fills) observes it in addition to the token passed to
/// it, so a recipe written without tokens still stops on the first Ctrl+C. It flows like
/// <see cref="AsyncLocal{T}"/>: into tasks and threads started from the run (a plugin's device thread started during a
/// submission sees that submission's token). Outside a run it is <see cref="CancellationToken.None"/>.
/// Plugins use it for their own blocking waits: <see cref="Link"/>, <see cref="Wait"/>, <see cref="ThrowIfCancellationRequested"/>.
/// </summary>
public static class RunCancellation
{
    // The token in a class: AsyncLocal over a reference type runs the framework's shared precompiled code, while
    // AsyncLocal<CancellationToken> (a struct from outside the SDK) is JIT-compiled in every run that enters one.
    static readonly AsyncLocal<TokenBox?> Ambient = new();

    sealed class TokenBox(CancellationToken token)
    {
        public readonly CancellationToken Token = token;
    }

    static CancellationToken AmbientToken => Ambient.Value?.Token ?? CancellationToken.None;

    /// <summary>The current run's token (None outside a run).</summary>
    public static CancellationToken Current => AmbientToken;

    /// <summary>Makes <paramref name="token"/> the ambient cancellation of this flow until the returned scope is disposed
    /// (the shell calls this around a run; tests may too).</summary>
    public static Scope Enter(CancellationToken token)
    {
        var previous = AmbientToken;
        Ambient.Value = new TokenBox(token);
        return new Scope(previous);
    }

    /// <summary>A token that fires when <paramref name="token"/> or the ambient cancellation does; dispose the result
    /// (<c>using var c = RunCancellation.Link(token); Wait(c.Token)</c>). Outside a run it is <paramref name="token"/> itself.
    /// Inside one it is always a fresh linked source: the run's own source may be disposed when the run ends, while a
    /// thread started from it still waits.</summary>
    public static Linked Link(CancellationToken token)
    {
        var a = AmbientToken;
        if (!a.CanBeCanceled) return new Linked(token, null);
        var cts = token.CanBeCanceled ? CancellationTokenSource.CreateLinkedTokenSource(token, a) : CancellationTokenSource.CreateLinkedTokenSource(a);
        return new Linked(cts.Token, cts);
    }

    /// <summary>Throws <see cref="OperationCanceledException"/> when <paramref name="token"/> or the ambient cancellation has fired.</summary>
    public static void ThrowIfCancellationRequested(CancellationToken token = default)
    {
        token.ThrowIfCancellationRequested();
        AmbientToken.ThrowIfCancellationRequested();
    }

    /// <summary>Waits for <paramref name="handle"/> up to <paramref name="timeout"/> (infinite by default); throws
    /// <see cref="OperationCanceledException"/> as soon as <paramref name="token"/> or the ambient cancellation fires.
    /// Returns whether the handle was signalled.</summary>
    public static bool Wait(WaitHandle handle, TimeSpan? timeout = null, CancellationToken token = default)
    {
        ArgumentNullException.ThrowIfNull(handle);
        using var c = Link(token);
        var ms = timeout is { } t ? (int)Math.Clamp((long)t.TotalMilliseconds, -1, int.MaxValue) : Timeout.Infinite;
        int i = WaitHandle.WaitAny([handle, c.Token.WaitHandle], ms);
        c.Token.ThrowIfCancellationRequested();
        return i == 0;
    }

    /// <summary>Sleeps, waking early (with <see cref="OperationCanceledException"/>) on cancellation.</summary>
    public static void Sleep(TimeSpan duration, CancellationToken token = default)
    {
        using var c = Link(token);
        c.Token.WaitHandle.WaitOne(duration);
        c.Token.ThrowIfCancellationRequested();
    }

    /// <summary>Restores the previous ambient cancellation when disposed.</summary>
    public readonly struct Scope(CancellationToken previous) : IDisposable
    {
        /// <inheritdoc/>
        public void Dispose() => Ambient.Value = previous.CanBeCanceled ? new TokenBox(previous) : null;
    }

    /// <summary>A token linked with the ambient cancellation, and the source to dispose if one was needed.</summary>
    public readonly struct Linked(CancellationToken token, CancellationTokenSource? source) : IDisposable
    {
        /// <summary>The token in effect.</summary>
        public CancellationToken Token { get; } = token;
        /// <inheritdoc/>
        public void Dispose() => source?.Dispose();
    }
}
