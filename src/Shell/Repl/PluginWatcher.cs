namespace VirtLab.Shell.Repl;

/// <summary>
/// Watches the folders of the loaded plugins and reports, once the writes have settled (a build copies
/// several files in a burst), which folders changed. Rebuilt only when the set of folders changes, so a
/// hot swap that keeps the same plugins keeps the same watchers.
/// </summary>
internal sealed class PluginWatcher : IDisposable
{
    private static readonly TimeSpan Debounce = TimeSpan.FromMilliseconds(300);

    private readonly Action<IReadOnlyCollection<string>> _changed;
    private readonly Timer _timer;
    private readonly object _lock = new();
    private readonly HashSet<string> _pending = new(StringComparer.Ordinal);
    private List<FileSystemWatcher> _watchers = [];
    private HashSet<string> _folders = new(StringComparer.Ordinal);

    public PluginWatcher(Action<IReadOnlyCollection<string>> changed)
    {
        _changed = changed;
        _timer = new Timer(_ => Fire());
    }

    public void Watch(IEnumerable<string> folders)
    {
        var wanted = folders.Where(Directory.Exists).Select(Path.GetFullPath).ToHashSet(StringComparer.Ordinal);
        lock (_lock)
        {
            if (wanted.SetEquals(_folders)) return;
            foreach (var w in _watchers) w.Dispose();
            _watchers = [];
            _folders = wanted;
            foreach (var folder in wanted)
            {
                var w = new FileSystemWatcher(folder)
                {
                    NotifyFilter = NotifyFilters.FileName | NotifyFilters.LastWrite | NotifyFilters.Size | NotifyFilters.CreationTime,
                    IncludeSubdirectories = false,
                };
                w.Changed += OnEvent;
                w.Created += OnEvent;
                w.Renamed += OnEvent;
                w.EnableRaisingEvents = true;
                _watchers.Add(w);
            }
        }
    }

    /// <summary>A change was seen and its report is still being held back (debounce).</summary>
    public bool HasPending { get { lock (_lock) return _pending.Count > 0; } }

    private void OnEvent(object sender, FileSystemEventArgs e)
    {
        // Only what a rebuild of the plugin replaces; a .pdb alone or an editor's temp file is no new build.
        if (!(e.Name?.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) == true
              || e.Name?.EndsWith(".deps.json", StringComparison.OrdinalIgnoreCase) == true)) return;
        lock (_lock)
        {
            _pending.Add(((FileSystemWatcher)sender).Path);
            _timer.Change(Debounce, Timeout.InfiniteTimeSpan);
        }
    }

    private void Fire()
    {
        string[] changed;
        lock (_lock)
        {
            changed = [.. _pending];
            _pending.Clear();
        }
        if (changed.Length > 0) _changed(changed);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var w in _watchers) w.Dispose();
            _watchers = [];
        }
        _timer.Dispose();
    }
}
