namespace VirtLab.Shell.Repl;

internal sealed partial class Repl
{
    /// <summary>What a replay did: how many ran again, and the submissions that left the session with why.</summary>
    private sealed record ReplayOutcome(int Replayed, List<string> Dropped, bool Interrupted);

    /// <summary>
    /// Runs the successful submissions again on <paramref name="host"/> (caller holds <see cref="_hostLock"/>), quietly,
    /// showing "replaying i/n …" as it goes. Ctrl+C stops it: what replayed so far stays, the rest leaves the session
    /// (named in the outcome). A submission that no longer compiles or runs leaves it too. The values are recomputed:
    /// a replay re-runs workloads and draws new random numbers, it does not restore objects.
    /// </summary>
    private async Task<ReplayOutcome> Replay(HostClient host)
    {
        var all = _submissions.ToList();
        var kept = new List<string>(all.Count);
        var dropped = new List<string>();
        var interrupted = false;
        var replayed = 0;
        var interrupt = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        _interrupt = interrupt; // Ctrl+C now stops the replay (OnSigint)
        try
        {
            for (var i = 0; i < all.Count; i++)
            {
                var code = all[i];
                ReplayProgress(i + 1, all.Count, code);
                var submit = host.SendAsync(new Request { Kind = RequestKind.Submit, Code = code, Quiet = true });
                if (!interrupted && await Task.WhenAny(submit, interrupt.Task) == interrupt.Task)
                {
                    interrupted = true;
                    host.SendCancel(); // the SDK's calls see it through RunCancellation, tokens or not
                    if (await Task.WhenAny(submit, Task.Delay(CancelGrace)) != submit)
                    {
                        // Ignores cancellation: no host for now; the next evaluation starts one and replays what is kept.
                        _host = null;
                        host.Dispose();
                        _ = submit.ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
                        dropped.AddRange(all.Skip(i).Select((c, k) => $"{i + k + 1}/{all.Count} {Shorten(c)}"));
                        break;
                    }
                }
                Reply r;
                try { r = await submit; }
                catch (HostDiedException e)
                {
                    // The rest stays for the next host (the next evaluation starts one).
                    dropped.Add($"host died during replay ({e.How})");
                    kept.AddRange(all.Skip(i));
                    break;
                }
                if (r.Status == SubmitStatus.Ok) { replayed++; kept.Add(code); }
                // A submission that no longer compiles or runs (e.g. the plugin's API changed) leaves the session.
                else if (!interrupted || r.Status != SubmitStatus.Cancelled)
                    dropped.Add($"{i + 1}/{all.Count} {Shorten(code)}: " + (r.Diagnostics?.FirstOrDefault()?.ToString() ?? r.Error ?? r.Status));
                else dropped.Add($"{i + 1}/{all.Count} {Shorten(code)}");
                if (interrupted)
                {
                    dropped.AddRange(all.Skip(i + 1).Select((c, k) => $"{i + k + 2}/{all.Count} {Shorten(c)}"));
                    break;
                }
            }
        }
        finally
        {
            _interrupt = null;
            ReplayProgress(0, 0, null);
        }
        _submissions.Clear();
        _submissions.AddRange(kept);
        return new ReplayOutcome(replayed, dropped, interrupted);
    }

    private bool _progressShown;
    private bool _anyFailed; // a submission failed (compile error, exception, Ctrl+C, host death): piped mode exits 1

    /// <summary>"replaying i/n · code": on a terminal a status line rewritten in place (when the prompt is not up:
    /// a swap while the user types gets only the final notice); piped, one line per submission. (0, 0): done.</summary>
    private void ReplayProgress(int i, int n, string? code)
    {
        if (!_lines.IsInteractive)
        {
            if (n > 0) { Console.Out.WriteLine($"… replaying {i}/{n} · {Shorten(code!)}"); Console.Out.Flush(); }
            return;
        }
        if (_promptCancel is not null) return;
        var err = Console.Error;
        if (n == 0)
        {
            if (_progressShown) { err.Write("\r\u001b[2K"); err.Flush(); }
            _progressShown = false;
            return;
        }
        var text = $"↻ replaying {i}/{n} · {Shorten(code!)}  (Ctrl+C stops the replay)";
        err.Write(_color ? $"\r\u001b[2K\u001b[36m{text}\u001b[0m" : "\r\u001b[2K" + text);
        err.Flush();
        _progressShown = true;
    }
}
