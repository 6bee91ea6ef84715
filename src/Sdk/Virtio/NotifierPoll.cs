using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Virtio;

/// <summary>
/// Waiting on several notifiers at once, as a vhost worker does on the kick eventfds of all its queues: one poll(2)
/// over their eventfds. Counters are not read; the caller reads the notifiers it cares about.
/// </summary>
public static unsafe class NotifierPoll
{
    /// <summary>
    /// Blocks until one of <paramref name="notifiers"/> has a non-zero counter and returns the lowest such index, or −1
    /// when <paramref name="timeout"/> passes first (<see cref="Timeout.InfiniteTimeSpan"/> waits for ever). A disposed
    /// notifier counts as signalled (its index is returned), so a waiter never sleeps on a closed fd.
    /// </summary>
    public static int WaitAny(ReadOnlySpan<EventNotifier> notifiers, TimeSpan timeout) => WaitAny(notifiers, default, timeout);

    /// <summary>
    /// As <see cref="WaitAny(ReadOnlySpan{EventNotifier}, TimeSpan)"/>, and sets <paramref name="ready"/>[i] for every
    /// notifier that poll(2) reported (or that is disposed), false for the others, so the caller reads only those: on a
    /// wake-up for one queue's kick, the read(2) of every other eventfd would only return EAGAIN. An empty
    /// <paramref name="ready"/> records nothing; otherwise it must be as long as <paramref name="notifiers"/>.
    /// </summary>
    public static int WaitAny(ReadOnlySpan<EventNotifier> notifiers, Span<bool> ready, TimeSpan timeout)
    {
        if (!ready.IsEmpty && ready.Length < notifiers.Length)
            throw new ArgumentException($"ready has {ready.Length} entries for {notifiers.Length} notifiers", nameof(ready));
        ready.Clear();
        if (notifiers.Length == 0) throw new ArgumentException("WaitAny needs at least one notifier", nameof(notifiers));
        if (timeout < TimeSpan.Zero && timeout != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(timeout), $"timeout must be ≥ 0 or Timeout.InfiniteTimeSpan; got {timeout}");
        var fds = notifiers.Length <= 16 ? stackalloc Libc.PollFd[notifiers.Length] : new Libc.PollFd[notifiers.Length];
        for (int i = 0; i < notifiers.Length; i++)
        {
            if (notifiers[i].IsDisposed)
            {
                if (!ready.IsEmpty) ready[i] = true;
                return i;
            }
            fds[i] = new Libc.PollFd { fd = notifiers[i].Fd, events = Libc.POLLIN };
        }
        var deadline = timeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)Math.Ceiling(timeout.TotalMilliseconds);
        fixed (Libc.PollFd* p = fds)
        {
            while (true)
            {
                var left = deadline == long.MaxValue ? -1 : (int)Math.Clamp(deadline - Environment.TickCount64, 0, int.MaxValue);
                var r = Libc.poll(p, (nuint)fds.Length, left);
                if (r < 0)
                {
                    var e = Libc.Errno;
                    if (e == Errno.EINTR) continue;
                    throw LibcException.FromErrno(e, "poll", "waiting on notifiers");
                }
                int first = -1;
                for (int i = 0; i < fds.Length; i++)
                    if (p[i].revents != 0 || notifiers[i].IsDisposed)
                    {
                        if (first < 0) first = i;
                        if (ready.IsEmpty) break;
                        ready[i] = true;
                    }
                if (first >= 0) return first;
                if (left >= 0 && Environment.TickCount64 >= deadline) return -1;
            }
        }
    }
}
