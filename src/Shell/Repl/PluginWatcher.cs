using VirtLab.Shell.PluginHost;

namespace VirtLab.Shell.Repl;

/// <summary>
/// Watches the plugin search roots (not only the loaded plugins' folders) and reports, once the writes have settled
/// (a build copies several files in a burst), which plugin folders changed: a rebuilt plugin, and a plugin folder that
/// appears under a root while the REPL runs. A root that does not exist yet is watched through its nearest existing
/// ancestor; the shell's own roots through bin/VirtLab.Shell/, so a configuration built for the first time (a plain
/// <c>dotnet build</c> of a plugin makes debug/plugins/) is seen too. Rebuilt only when the watched folders change.
/// </summary>
internal sealed class PluginWatcher : IDisposable
{
    private static readonly TimeSpan Debounce = TimeSpan.FromMilliseconds(300);

    private readonly Action<IReadOnlyCollection<string>> _changed;
    private readonly Func<IEnumerable<string>> _roots;
    private readonly Timer _timer;
    private readonly object _lock = new();
    private readonly HashSet<string> _pending = new(StringComparer.Ordinal);
    private List<FileSystemWatcher> _watchers = [];
    private HashSet<string> _folders = new(StringComparer.Ordinal);

    /// <param name="roots">The plugin roots (asked again on every event: the shell's configurations may grow).</param>
    public PluginWatcher(Func<IEnumerable<string>> roots, Action<IReadOnlyCollection<string>> changed)
    {
        _roots = roots;
        _changed = changed;
        _timer = new Timer(_ => Fire());
    }

    /// <summary>Starts (or keeps) watching the current roots.</summary>
    public void Watch()
    {
        var wanted = new HashSet<string>(StringComparer.Ordinal);
        foreach (var root in _roots().Select(Path.GetFullPath))
        {
            var dir = PluginSearchPaths.IsBuiltIn(root) && ShellConfigurations(root) is { } all ? all : root;
            while (!Directory.Exists(dir) && Path.GetDirectoryName(dir) is { } parent) dir = parent;
            wanted.Add(dir);
        }
        // A recursive watch covers the folders below it.
        wanted.RemoveWhere(d => wanted.Any(o => o != d && d.StartsWith(o + Path.DirectorySeparatorChar, StringComparison.Ordinal)));
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
                    NotifyFilter = NotifyFilters.FileName | NotifyFilters.DirectoryName | NotifyFilters.LastWrite | NotifyFilters.Size | NotifyFilters.CreationTime,
                    IncludeSubdirectories = true,
                };
                w.Changed += OnEvent;
                w.Created += OnEvent;
                w.Renamed += OnEvent;
                w.EnableRaisingEvents = true;
                _watchers.Add(w);
            }
        }
    }

    /// <summary>bin/VirtLab.Shell/ for a root bin/VirtLab.Shell/&lt;config&gt;/plugins, else null.</summary>
    private static string? ShellConfigurations(string root)
    {
        var config = Path.GetDirectoryName(root);
        var shell = config is null ? null : Path.GetDirectoryName(config);
        return shell is not null && Path.GetFileName(shell) == "VirtLab.Shell" ? shell : null;
    }

    /// <summary>A change was seen and its report is still being held back (debounce).</summary>
    public bool HasPending { get { lock (_lock) return _pending.Count > 0; } }

    private void OnEvent(object sender, FileSystemEventArgs e)
    {
        // Only what a rebuild of the plugin replaces (a .pdb alone or an editor's temp file is no new build), and new
        // folders (files created right after their folder may be missed by the watch: the debounce catches up).
        var isDirectory = e.ChangeType == WatcherChangeTypes.Created && Directory.Exists(e.FullPath);
        if (!(isDirectory || e.Name?.EndsWith(".dll", StringComparison.OrdinalIgnoreCase) == true
              || e.Name?.EndsWith(".deps.json", StringComparison.OrdinalIgnoreCase) == true)) return;
        if (PluginFolderOf(e.FullPath) is not { } folder) return;
        lock (_lock)
        {
            _pending.Add(folder);
            _timer.Change(Debounce, Timeout.InfiniteTimeSpan);
        }
    }

    /// <summary>The plugin folder a changed path belongs to: the root itself when the root is a plugin folder (a file
    /// directly in it), else the root's child folder on the way to the path; null when the path is under no root.</summary>
    private string? PluginFolderOf(string path)
    {
        foreach (var root in _roots().Select(r => Path.TrimEndingDirectorySeparator(Path.GetFullPath(r))))
        {
            if (!path.StartsWith(root + Path.DirectorySeparatorChar, StringComparison.Ordinal)) continue;
            var rel = path[(root.Length + 1)..];
            var slash = rel.IndexOf(Path.DirectorySeparatorChar);
            return slash < 0 && !Directory.Exists(path) ? root : Path.Combine(root, slash < 0 ? rel : rel[..slash]);
        }
        return null;
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
