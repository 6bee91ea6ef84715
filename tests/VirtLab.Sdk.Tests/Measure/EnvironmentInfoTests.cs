using VirtLab.Sdk.Measure;
using Xunit;

namespace VirtLab.Sdk.Tests.Measure;

public sealed class EnvironmentInfoTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("vl-env-").FullName;
    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    public void Capture_fills_fields_on_linux()
    {
        var e = EnvironmentInfo.Capture();
        Assert.False(string.IsNullOrEmpty(e.Virtlab));
        Assert.False(string.IsNullOrEmpty(e.Sdk));
        Assert.False(string.IsNullOrEmpty(e.Os));
        Assert.StartsWith(".NET", e.Runtime);
        Assert.True(e.Cores > 0);
        Assert.Empty(e.Plugins);
        if (!OperatingSystem.IsLinux()) return;
        Assert.Matches(@"^\d+\.\d+", e.Kernel);
        Assert.True(e.Memory > 64.MiB());
        if (File.ReadAllText("/proc/cpuinfo").Contains("model name")) Assert.False(string.IsNullOrWhiteSpace(e.Cpu));
    }

    private const string Sha1 = "0123456789abcdef0123456789abcdef01234567";
    private const string Sha2 = "89abcdef0123456789abcdef0123456789abcdef";

    private string Repo(string head)
    {
        var git = Path.Combine(_dir, "repo", ".git");
        Directory.CreateDirectory(Path.Combine(git, "refs", "heads"));
        File.WriteAllText(Path.Combine(git, "HEAD"), head + "\n");
        var recipeDir = Path.Combine(_dir, "repo", "scripts", "sub");
        Directory.CreateDirectory(recipeDir);
        var recipe = Path.Combine(recipeDir, "r.csx");
        File.WriteAllText(recipe, "");
        return recipe;
    }

    [Fact]
    public void Git_commit_from_loose_ref()
    {
        var recipe = Repo("ref: refs/heads/main");
        File.WriteAllText(Path.Combine(_dir, "repo", ".git", "refs", "heads", "main"), Sha1 + "\n");
        Assert.Equal(Sha1, EnvironmentInfo.Capture(recipePath: recipe).GitCommit);
    }

    [Fact]
    public void Git_commit_from_packed_refs()
    {
        var recipe = Repo("ref: refs/heads/dev");
        File.WriteAllText(Path.Combine(_dir, "repo", ".git", "packed-refs"),
            $"# pack-refs with: peeled fully-peeled sorted\n{Sha2} refs/heads/main\n{Sha1} refs/heads/dev\n^{Sha2}\n");
        Assert.Equal(Sha1, Git.FindCommit(recipe));
    }

    [Fact]
    public void Git_detached_head_and_unborn_branch()
    {
        Assert.Equal(Sha2, Git.FindCommit(Repo(Sha2)));
        Directory.Delete(Path.Combine(_dir, "repo"), true);
        Assert.Null(Git.FindCommit(Repo("ref: refs/heads/none")));
    }

    [Fact]
    public void Git_worktree_gitdir_file_and_commondir()
    {
        var main = Path.Combine(_dir, "main", ".git");
        var wt = Path.Combine(main, "worktrees", "wt");
        Directory.CreateDirectory(Path.Combine(main, "refs", "heads"));
        Directory.CreateDirectory(wt);
        File.WriteAllText(Path.Combine(main, "refs", "heads", "feature"), Sha2 + "\n");
        File.WriteAllText(Path.Combine(wt, "HEAD"), "ref: refs/heads/feature\n");
        File.WriteAllText(Path.Combine(wt, "commondir"), "../..\n");
        var checkout = Path.Combine(_dir, "wt");
        Directory.CreateDirectory(checkout);
        File.WriteAllText(Path.Combine(checkout, ".git"), $"gitdir: {wt}\n");
        Assert.Equal(Sha2, Git.FindCommit(checkout));
    }

    [Fact]
    public void No_repository_means_no_commit() => Assert.Null(Git.FindCommit(_dir)); // the temp folder is in no repository
}
