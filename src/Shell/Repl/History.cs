using System.Text;

namespace VirtLab.Shell.Repl;

/// <summary>
/// Persistent submission history, <c>$HOME/.virtlab/history</c>. One entry per line; a multi-line
/// submission is stored on one line with <c>\n</c> and <c>\\</c> escapes. Entries are appended as they
/// are submitted, so two shells at once interleave rather than overwrite each other. An entry equal to the one before
/// it is not kept twice (Up then Enter does not fill the history with one line).
/// </summary>
internal sealed class History
{
    private const int Keep = 1000;
    private readonly string? _path;
    private string? _last;

    public IReadOnlyList<string> Entries { get; }

    public History(string? path)
    {
        _path = path;
        Entries = Load(path);
        _last = Entries.Count > 0 ? Entries[^1] : null;
    }

    public static string? DefaultPath()
    {
        var home = Environment.GetEnvironmentVariable("HOME");
        if (string.IsNullOrEmpty(home)) home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        return string.IsNullOrEmpty(home) ? null : Path.Combine(home, ".virtlab", "history");
    }

    private static List<string> Load(string? path)
    {
        if (path is null || !File.Exists(path)) return [];
        try
        {
            var lines = File.ReadAllLines(path);
            var entries = new List<string>();
            foreach (var entry in lines.Where(l => l.Length > 0).Select(Unescape))
                if (entries.Count == 0 || entries[^1] != entry) entries.Add(entry);
            if (lines.Length > 2 * Keep) // compact now and then so the file stays small
            {
                entries = entries.TakeLast(Keep).ToList();
                File.WriteAllLines(path, entries.Select(Escape));
            }
            return entries.TakeLast(Keep).ToList();
        }
        catch (IOException) { return []; }
        catch (UnauthorizedAccessException) { return []; }
    }

    public void Append(string entry)
    {
        if (_path is null || string.IsNullOrWhiteSpace(entry) || entry == _last) return;
        _last = entry;
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(_path)!);
            File.AppendAllText(_path, Escape(entry) + "\n");
        }
        catch (IOException) { }             // history is a convenience: never fail a submission over it
        catch (UnauthorizedAccessException) { }
    }

    internal static string Escape(string s)
    {
        var sb = new StringBuilder(s.Length + 8);
        foreach (var c in s.Replace("\r\n", "\n"))
            sb.Append(c switch { '\\' => "\\\\", '\n' => "\\n", _ => c.ToString() });
        return sb.ToString();
    }

    internal static string Unescape(string s)
    {
        var sb = new StringBuilder(s.Length);
        for (var i = 0; i < s.Length; i++)
        {
            if (s[i] == '\\' && i + 1 < s.Length)
            {
                i++;
                sb.Append(s[i] == 'n' ? '\n' : s[i]);
            }
            else sb.Append(s[i]);
        }
        return sb.ToString();
    }
}
