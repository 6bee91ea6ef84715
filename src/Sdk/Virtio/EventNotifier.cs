using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Virtio;

/// <summary>
/// A kick or call notification with eventfd semantics, backed by a real Linux eventfd (as vhost's kickfd/callfd,
/// QEMU's EventNotifier): <see cref="Signal"/> adds to a 64-bit counter, <see cref="TryRead"/> returns it and resets it to
/// 0, and a thread can block in <see cref="Wait(CancellationToken)"/> until it is non-zero (with a timeout and a cancellation token).
/// The queue that owns it counts the notifications it sent and the ones it decided to suppress.
/// </summary>
public sealed unsafe class EventNotifier : IDisposable, IDisplayable
{
    readonly int _fd;
    readonly int _disposeFd; // becomes readable on Dispose, so blocked waiters return
    int _disposed;
    int _active; // calls using the fds right now; Dispose closes them only when none is
    long _sent, _suppressed, _reads, _received;

    /// <summary>A new eventfd named <paramref name="name"/> (for display).</summary>
    public EventNotifier(string name = "eventfd") : this(name, -1) { }

    EventNotifier(string name, int existing)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Name = name;
        _fd = existing >= 0 ? existing : Libc.Check(Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK), "eventfd", $"creating notifier {name}");
        var d = Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK);
        if (d < 0)
        {
            var e = Libc.Errno;
            Libc.close(_fd);
            throw LibcException.FromErrno(e, "eventfd", $"creating notifier {name}");
        }
        _disposeFd = d;
    }

    /// <summary>
    /// A notifier on a copy (dup) of an existing eventfd — e.g. the fd a recipe passes to a model of
    /// VHOST_SET_VRING_KICK / _CALL, as QEMU passes its own. The caller keeps its fd; signals on either reach both.
    /// Throws <see cref="ArgumentException"/> (EBADF/EINVAL in the kernel's terms) when <paramref name="fd"/> is not an
    /// open eventfd. The copy is made non-blocking, which the original shares (one open file).
    /// </summary>
    public static EventNotifier FromFd(int fd, string name = "eventfd")
    {
        string? target = null;
        try { target = fd >= 0 ? new FileInfo($"/proc/self/fd/{fd}").LinkTarget : null; } catch (IOException) { }
        if (target != "anon_inode:[eventfd]")
            throw new ArgumentException($"fd {fd} is not an open eventfd ({target ?? "not open"}); the kernel would answer {(target is null ? "EBADF" : "EINVAL")}", nameof(fd));
        var copy = Libc.Check(Libc.fcntl(fd, Libc.F_DUPFD_CLOEXEC, 0), "fcntl(F_DUPFD_CLOEXEC)", $"copying eventfd {fd}");
        const int F_GETFL = 3, F_SETFL = 4;
        var flags = Libc.fcntl(copy, F_GETFL, 0);
        if (flags < 0 || Libc.fcntl(copy, F_SETFL, flags | Libc.O_NONBLOCK) < 0)
        {
            var e = Libc.Errno;
            Libc.close(copy);
            throw LibcException.FromErrno(e, "fcntl(F_SETFL)", $"making eventfd {fd} non-blocking");
        }
        return new EventNotifier(name, copy);
    }

    /// <summary>The name shown in the REPL.</summary>
    public string Name { get; }

    /// <summary>The eventfd (e.g. to hand to a model of VHOST_SET_VRING_KICK). Owned by this object.</summary>
    public int Fd
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsDisposed, this);
            return _fd;
        }
    }

    /// <summary>Whether <see cref="Dispose"/> ran.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>Notifications signalled (eventfd writes).</summary>
    public long Sent => Volatile.Read(ref _sent);

    /// <summary>Notifications the queue decided not to send (EVENT_IDX, NO_NOTIFY / NO_INTERRUPT).</summary>
    public long Suppressed => Volatile.Read(ref _suppressed);

    /// <summary>Successful reads (each returns and resets the counter).</summary>
    public long Reads => Volatile.Read(ref _reads);

    /// <summary>Sum of the counter values read.</summary>
    public long Received => Volatile.Read(ref _received);

    /// <summary>Adds <paramref name="count"/> to the counter (write(2) of a u64), waking a waiter.</summary>
    public void Signal(ulong count = 1)
    {
        if (count == 0) throw new ArgumentOutOfRangeException(nameof(count), "an eventfd signal adds at least 1");
        Enter();
        try
        {
            if (Libc.write(_fd, &count, 8) != 8)
            {
                var e = Libc.Errno;
                if (e != Errno.EAGAIN) throw LibcException.FromErrno(e, "write", $"signalling {Name}"); // EAGAIN: counter saturated, already signalled
            }
            Interlocked.Increment(ref _sent);
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>Records a notification that was decided against (the queue calls this; a device model may too).</summary>
    public void Suppress() => Interlocked.Increment(ref _suppressed);

    /// <summary>Reads and resets the counter without blocking; false when it is 0.</summary>
    public bool TryRead(out ulong value)
    {
        Enter();
        try
        {
            ulong v = 0;
            if (Libc.read(_fd, &v, 8) != 8)
            {
                var e = Libc.Errno;
                if (e != Errno.EAGAIN) throw LibcException.FromErrno(e, "read", $"reading {Name}");
                value = 0;
                return false;
            }
            Interlocked.Increment(ref _reads);
            Interlocked.Add(ref _received, (long)v);
            value = v;
            return true;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>Reads and resets the counter; 0 when nothing was signalled.</summary>
    public ulong Read() => TryRead(out var v) ? v : 0;

    /// <summary>
    /// Blocks until the counter is non-zero (true), the timeout passes (false; <see cref="Timeout.InfiniteTimeSpan"/>
    /// waits for ever), <paramref name="cancellation"/> fires (<see cref="OperationCanceledException"/>) or the notifier is
    /// disposed (<see cref="ObjectDisposedException"/>). Does not read the counter.
    /// </summary>
    public bool Wait(TimeSpan timeout, CancellationToken cancellation = default)
    {
        if (timeout < TimeSpan.Zero && timeout != Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(timeout), $"timeout must be ≥ 0 or Timeout.InfiniteTimeSpan; got {timeout}");
        cancellation.ThrowIfCancellationRequested();
        Enter();
        try
        {
            var wake = cancellation.CanBeCanceled ? CancelWake.ForThisThread() : null;
            using var reg = wake is null ? default : cancellation.Register(static w => ((CancelWake)w!).Signal(), wake);
            var deadline = timeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)Math.Ceiling(timeout.TotalMilliseconds);
            var fds = stackalloc Libc.PollFd[3];
            try
            {
                while (true)
                {
                    fds[0] = new Libc.PollFd { fd = _fd, events = Libc.POLLIN };
                    fds[1] = new Libc.PollFd { fd = _disposeFd, events = Libc.POLLIN };
                    fds[2] = new Libc.PollFd { fd = wake?.Fd ?? -1, events = Libc.POLLIN }; // fd −1 is ignored by poll
                    var left = deadline == long.MaxValue ? -1 : (int)Math.Clamp(deadline - Environment.TickCount64, 0, int.MaxValue);
                    var r = Libc.poll(fds, 3, left);
                    if (r < 0)
                    {
                        var e = Libc.Errno;
                        if (e == Errno.EINTR) continue;
                        throw LibcException.FromErrno(e, "poll", $"waiting on {Name}");
                    }
                    if (fds[0].revents != 0) return true;
                    if (IsDisposed) throw new ObjectDisposedException(Name, $"notifier {Name} was disposed while a thread waited on it");
                    cancellation.ThrowIfCancellationRequested();
                    if (r == 0 && left >= 0 && Environment.TickCount64 >= deadline) return false;
                }
            }
            finally
            {
                reg.Dispose(); // no callback runs after this, so the drain below leaves the thread's wake fd clean
                wake?.Drain();
            }
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>Blocks without a timeout (see <see cref="Wait(TimeSpan, CancellationToken)"/>).</summary>
    public void Wait(CancellationToken cancellation = default) => Wait(Timeout.InfiniteTimeSpan, cancellation);

    /// <summary>Waits (as <see cref="Wait(TimeSpan, CancellationToken)"/>) and reads: the counter value, or 0 on timeout.</summary>
    public ulong WaitAndRead(TimeSpan timeout, CancellationToken cancellation = default)
    {
        while (Wait(timeout, cancellation))
            if (TryRead(out var v)) return v; // another reader may have taken it: wait again
        return 0;
    }

    void Enter()
    {
        Interlocked.Increment(ref _active);
        if (Volatile.Read(ref _disposed) != 0)
        {
            Interlocked.Decrement(ref _active);
            throw new ObjectDisposedException(Name, $"notifier {Name} has been disposed");
        }
    }

    void Exit() => Interlocked.Decrement(ref _active);

    /// <inheritdoc/>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        ulong one = 1;
        Libc.write(_disposeFd, &one, 8);
        var spin = new SpinWait();
        while (Volatile.Read(ref _active) != 0) spin.SpinOnce();
        Libc.close(_fd);
        Libc.close(_disposeFd);
    }

    /// <inheritdoc/>
    public override string ToString() => $"{Name}: eventfd, sent {Sent}, suppressed {Suppressed}, reads {Reads}";

    /// <inheritdoc/>
    public IRenderable ToRenderable()
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"notifier {Name} (eventfd{(IsDisposed ? ", disposed" : $" {_fd}")})")) };
        t.AddColumn("sent").AddColumn("suppressed").AddColumn("reads").AddColumn("received");
        t.AddRow(Sent.ToString("N0"), Suppressed.ToString("N0"), Reads.ToString("N0"), Received.ToString("N0"));
        return t;
    }

    /// <summary>A per-thread eventfd a cancellation callback writes to, so a blocked poll wakes up.</summary>
    sealed class CancelWake
    {
        [ThreadStatic] static CancelWake? _current;
        public readonly int Fd = Libc.Check(Libc.eventfd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK), "eventfd", "creating a cancellation wake-up");

        public static CancelWake ForThisThread() => _current ??= new CancelWake();

        public void Signal()
        {
            ulong one = 1;
            Libc.write(Fd, &one, 8);
        }

        public void Drain()
        {
            ulong v;
            Libc.read(Fd, &v, 8);
        }

        ~CancelWake() => Libc.close(Fd); // the thread died: nobody can wait with it any more
    }
}
