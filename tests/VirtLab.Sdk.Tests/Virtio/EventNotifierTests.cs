using VirtLab.Sdk.Virtio;
using Xunit;

namespace VirtLab.Sdk.Tests.Virtio;

public class EventNotifierTests
{
    [Fact]
    public void Counter_adds_and_read_resets()
    {
        using var n = new EventNotifier("kick");
        Assert.False(n.TryRead(out _));
        n.Signal();
        n.Signal(41);
        Assert.True(n.TryRead(out var v));
        Assert.Equal(42UL, v);
        Assert.Equal(0UL, n.Read());
        n.Suppress();
        Assert.Equal((2L, 1L, 1L, 42L), (n.Sent, n.Suppressed, n.Reads, n.Received));
        Assert.True(File.Exists($"/proc/self/fd/{n.Fd}"));
        Assert.StartsWith("anon_inode:[eventfd]", new FileInfo($"/proc/self/fd/{n.Fd}").LinkTarget);
        Assert.Throws<ArgumentOutOfRangeException>(() => n.Signal(0));
    }

    [Fact]
    public void Wait_returns_on_signal_and_times_out_without()
    {
        using var n = new EventNotifier();
        Assert.False(n.Wait(TimeSpan.FromMilliseconds(20)));
        Assert.Equal(0UL, n.WaitAndRead(TimeSpan.Zero));
        var waiter = Task.Factory.StartNew(() => n.WaitAndRead(TimeSpan.FromSeconds(30)), TaskCreationOptions.LongRunning);
        Thread.Sleep(20);
        n.Signal(3);
        Assert.Equal(3UL, waiter.Result);
    }

    [Fact]
    public void Cancellation_wakes_a_blocked_waiter_and_later_waits_still_block()
    {
        using var n = new EventNotifier();
        using var cts = new CancellationTokenSource();
        var waiter = Task.Factory.StartNew(() => n.Wait(Timeout.InfiniteTimeSpan, cts.Token), TaskCreationOptions.LongRunning);
        Thread.Sleep(20);
        Assert.False(waiter.IsCompleted);
        cts.Cancel();
        var e = Assert.Throws<AggregateException>(() => waiter.Wait(TimeSpan.FromSeconds(10)));
        Assert.IsAssignableFrom<OperationCanceledException>(e.InnerException);
        // The thread-level wake-up was drained: a fresh token's wait on this thread blocks until its timeout.
        using var other = new CancellationTokenSource();
        Assert.False(n.Wait(TimeSpan.FromMilliseconds(20), other.Token));
    }

    [Fact]
    public void Dispose_wakes_a_blocked_waiter()
    {
        var n = new EventNotifier("call");
        var waiter = Task.Factory.StartNew(() => n.Wait(Timeout.InfiniteTimeSpan), TaskCreationOptions.LongRunning);
        Thread.Sleep(20);
        n.Dispose();
        var e = Assert.Throws<AggregateException>(() => waiter.Wait(TimeSpan.FromSeconds(10)));
        Assert.IsType<ObjectDisposedException>(e.InnerException);
        Assert.Throws<ObjectDisposedException>(() => n.Signal());
        Assert.Throws<ObjectDisposedException>(() => n.Fd);
    }

    [Fact]
    public void FromFd_wraps_a_copy_of_an_existing_eventfd()
    {
        using var original = new EventNotifier("qemu's");
        using var model = EventNotifier.FromFd(original.Fd, "vq0 kick");
        Assert.NotEqual(original.Fd, model.Fd);
        original.Signal(5);
        Assert.Equal(5UL, model.Read()); // one eventfd, two descriptors
        Assert.Contains("not an open eventfd", Assert.Throws<ArgumentException>(() => EventNotifier.FromFd(-1)).Message);
        using var file = File.OpenRead("/proc/self/status");
        Assert.Contains("EINVAL", Assert.Throws<ArgumentException>(() => EventNotifier.FromFd((int)file.SafeFileHandle.DangerousGetHandle())).Message);
    }

    [Fact]
    public void WaitAny_reports_every_ready_notifier()
    {
        using var a = new EventNotifier("a");
        using var b = new EventNotifier("b");
        using var c = new EventNotifier("c");
        EventNotifier[] set = [a, b, c];
        var ready = new bool[3];
        Assert.Equal(-1, NotifierPoll.WaitAny(set, ready, TimeSpan.FromMilliseconds(10)));
        Assert.Equal([false, false, false], ready);
        b.Signal();
        c.Signal();
        Assert.Equal(1, NotifierPoll.WaitAny(set, ready, TimeSpan.FromSeconds(5)));
        Assert.Equal([false, true, true], ready);
        Assert.Equal(1UL, b.Read());                          // poll(2) reads nothing: the counters are still there
        Assert.Equal(2, NotifierPoll.WaitAny(set, ready, TimeSpan.FromSeconds(5)));
        Assert.Equal([false, false, true], ready);
        Assert.Throws<ArgumentException>(() => NotifierPoll.WaitAny(set, new bool[2], TimeSpan.Zero));
    }
}
