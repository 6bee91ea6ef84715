using VirtLab.Sdk.Native;
using VirtLab.Sdk.Virtio;

namespace VirtLab.Plugins.Vdpa;

/// <summary>
/// The owner's file table as vhost sees it when given an fd for a kick or call (eventfd_fget / eventfd_ctx_fdget):
/// an fd of a registered <see cref="EventNotifier"/> resolves to it; any other fd is EBADF when it is not open in
/// this process and EINVAL when it is open but is not that eventfd (checked in /proc/self/fd).
/// </summary>
public sealed class EventFdTable
{
    readonly Dictionary<int, EventNotifier> byFd = new();

    public EventNotifier Register(EventNotifier notifier)
    {
        lock (byFd) byFd[notifier.Fd] = notifier;
        return notifier;
    }

    public (int Errno, EventNotifier? Notifier) Resolve(int fd)
    {
        lock (byFd)
            if (byFd.TryGetValue(fd, out var n) && !n.IsDisposed && n.Fd == fd) return (0, n);
        if (fd < 0) return (Errno.EBADF, null);
        return File.Exists($"/proc/self/fd/{fd}") || Directory.Exists($"/proc/self/fd/{fd}") ? (Errno.EINVAL, null) : (Errno.EBADF, null);
    }
}
