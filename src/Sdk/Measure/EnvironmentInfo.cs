using System.Reflection;
using System.Runtime.InteropServices;
using VirtLab.Sdk.Machine;

namespace VirtLab.Sdk.Measure;

/// <summary>
/// What a run ran on, for the run record. <see cref="Capture"/> only reads a few small files under /proc, /etc
/// and .git — no processes — because it runs on every <c>virtlab run --json</c>. Fields it cannot learn are null.
/// </summary>
public sealed record EnvironmentInfo
{
    /// <summary>The shell's version.</summary>
    public required string Virtlab { get; init; }
    /// <summary>The SDK contract version, as every command shows it (<see cref="SdkVersion.Text"/>, e.g. "1.0").</summary>
    public required string Sdk { get; init; }
    /// <summary>Loaded plugins: name → version.</summary>
    public required IReadOnlyDictionary<string, string> Plugins { get; init; }
    /// <summary>HEAD of the git repository containing the recipe, when there is one.</summary>
    public string? GitCommit { get; init; }
    /// <summary>The commit virtlab itself was built from (the "+commit" of its informational version), when known.</summary>
    public string? VirtlabCommit { get; init; }
    /// <summary>Distribution name (/etc/os-release), else the runtime's OS description.</summary>
    public required string Os { get; init; }
    /// <summary>Kernel release (/proc/sys/kernel/osrelease).</summary>
    public string? Kernel { get; init; }
    /// <summary>Processor architecture (x64, arm64).</summary>
    public required string Architecture { get; init; }
    /// <summary>CPU model name (/proc/cpuinfo).</summary>
    public string? Cpu { get; init; }
    /// <summary>Logical CPUs available to this process.</summary>
    public int Cores { get; init; }
    /// <summary>Total RAM (MemTotal of /proc/meminfo); in JSON a byte count.</summary>
    public Size? Memory { get; init; }
    /// <summary>The .NET runtime, e.g. ".NET 10.0.0".</summary>
    public required string Runtime { get; init; }
    /// <summary>The host's name.</summary>
    public string? Hostname { get; init; }
    /// <summary>How the process was prepared before the recipe ran (ReadyToRun images, tiering, warm-up); set by the shell.</summary>
    public Preparation? Preparation { get; init; }

    /// <param name="virtlabVersion">The shell's version; defaults to the entry assembly's informational version.</param>
    /// <param name="plugins">Loaded plugins, name → version (the shell passes them in).</param>
    /// <param name="recipePath">The recipe file or folder; the git commit is looked up from there.</param>
    /// <param name="virtlabCommit">The commit the shell was built from (<see cref="VirtlabCommit"/>).</param>
    public static EnvironmentInfo Capture(string? virtlabVersion = null, IReadOnlyDictionary<string, string>? plugins = null, string? recipePath = null,
        string? virtlabCommit = null) => new()
    {
        Virtlab = virtlabVersion ?? InformationalVersion(Assembly.GetEntryAssembly()) ?? "unknown",
        Sdk = SdkVersion.Text,
        Plugins = new SortedDictionary<string, string>(plugins?.ToDictionary() ?? [], StringComparer.Ordinal),
        GitCommit = recipePath is null ? null : Git.FindCommit(recipePath),
        VirtlabCommit = virtlabCommit,
        Os = OsReleaseName() ?? RuntimeInformation.OSDescription,
        Kernel = HostInfo.KernelRelease,
        Architecture = RuntimeInformation.OSArchitecture.ToString().ToLowerInvariant(),
        Cpu = HostInfo.CpuModel,
        Cores = Environment.ProcessorCount,
        Memory = HostInfo.MemTotalBytes is > 0 and var ram ? ram.Bytes() : null,
        Runtime = RuntimeInformation.FrameworkDescription,
        Hostname = TryGet(() => Environment.MachineName),
    };

    private static string? InformationalVersion(Assembly? a)
    {
        var v = a?.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        // The .NET SDK appends "+<commit>" when building from git; the shell passes its own as VirtlabCommit.
        return v is null ? null : v.Split('+')[0];
    }

    private static string? OsReleaseName()
    {
        foreach (var line in ReadLines("/etc/os-release"))
            if (line.StartsWith("PRETTY_NAME=", StringComparison.Ordinal))
                return line["PRETTY_NAME=".Length..].Trim().Trim('"');
        return null;
    }

    internal static string[] ReadLines(string path) => TryGet(() => File.ReadAllLines(path)) ?? [];

    internal static string? ReadFirstLine(string path)
    {
        var s = TryGet(() => File.ReadAllText(path))?.Trim();
        return string.IsNullOrEmpty(s) ? null : s.Split('\n')[0].Trim();
    }

    private static T? TryGet<T>(Func<T> f) where T : class
    {
        try { return f(); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException) { return null; }
    }
}

/// <summary>Reads the HEAD commit from a .git directory without running git.</summary>
internal static class Git
{
    /// <summary>The 40-hex commit at HEAD of the repository containing <paramref name="path"/>, or null.</summary>
    public static string? FindCommit(string path)
    {
        try
        {
            var dir = Directory.Exists(path) ? Path.GetFullPath(path) : Path.GetDirectoryName(Path.GetFullPath(path));
            for (; dir is not null; dir = Path.GetDirectoryName(dir))
            {
                var gitDir = GitDir(Path.Combine(dir, ".git"));
                if (gitDir is not null) return ResolveHead(gitDir);
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException) { }
        return null;
    }

    /// <summary>.git is a directory, or (worktrees, submodules) a file "gitdir: PATH".</summary>
    private static string? GitDir(string dotGit)
    {
        if (Directory.Exists(dotGit)) return dotGit;
        if (!File.Exists(dotGit)) return null;
        var line = EnvironmentInfo.ReadFirstLine(dotGit);
        if (line is null || !line.StartsWith("gitdir:", StringComparison.Ordinal)) return null;
        var target = line["gitdir:".Length..].Trim();
        return Path.GetFullPath(target, Path.GetDirectoryName(dotGit)!);
    }

    private static string? ResolveHead(string gitDir)
    {
        // A linked worktree keeps HEAD in its own dir and shares refs through "commondir".
        var common = EnvironmentInfo.ReadFirstLine(Path.Combine(gitDir, "commondir")) is { } c
            ? Path.GetFullPath(c, gitDir) : gitDir;
        var head = EnvironmentInfo.ReadFirstLine(Path.Combine(gitDir, "HEAD"));
        for (int depth = 0; head is not null && depth < 5; depth++) // symbolic refs may chain
        {
            if (!head.StartsWith("ref:", StringComparison.Ordinal)) return IsSha(head) ? head.ToLowerInvariant() : null;
            var refName = head["ref:".Length..].Trim();
            head = EnvironmentInfo.ReadFirstLine(Path.Combine(gitDir, refName))
                ?? EnvironmentInfo.ReadFirstLine(Path.Combine(common, refName))
                ?? PackedRef(common, refName);
        }
        return null;
    }

    private static string? PackedRef(string gitDir, string refName)
    {
        foreach (var line in EnvironmentInfo.ReadLines(Path.Combine(gitDir, "packed-refs")))
        {
            // "<sha> refs/heads/main"; '#' header and '^' peeled-tag lines are skipped.
            var sp = line.IndexOf(' ');
            if (sp > 0 && line[0] != '#' && line[0] != '^' && line[(sp + 1)..].Trim() == refName) return line[..sp];
        }
        return null;
    }

    private static bool IsSha(string s) => s.Length is 40 or 64 && s.All(Uri.IsHexDigit);
}
