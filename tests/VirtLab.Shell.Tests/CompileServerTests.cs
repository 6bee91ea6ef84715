using System.Diagnostics;
using System.Net.Sockets;
using System.Text.Json;
using VirtLab.Shell.Cli;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>
/// The compile server (Cli/CompileServer) on real processes: each test has its own server folder (XDG_CACHE_HOME) and
/// starts the server itself in the foreground (`virtlab server run`), so it owns and ends it; no timed assertions.
/// </summary>
public sealed class CompileServerTests
{
    private const string Recipe = "var xs = Enumerable.Range(1, 6).ToList();\nResult(\"sum\", xs.Sum());\nResult(\"text\", string.Join(\",\", xs));\n";

    private static Dictionary<string, string> Env(TempDir tmp, string server) => new()
    {
        ["XDG_CACHE_HOME"] = Path.Combine(tmp.Path, "xdg"),
        ["VIRTLAB_SERVER"] = server,
        ["VIRTLAB_SERVER_IDLE"] = "30", // a server a failed test leaves goes away by itself
        ["VIRTLAB_WARMUP"] = "0",
    };

    /// <summary>`virtlab server run` as the test's child; returns once it answers `server status`.</summary>
    private static Process StartServer(TempDir tmp)
    {
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in new[] { Virtlab.Dll, "server", "run" }) psi.ArgumentList.Add(a);
        foreach (var (k, v) in Env(tmp, "1")) psi.Environment[k] = v;
        var server = Process.Start(psi)!;
        server.StandardInput.Close();
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(120))
        {
            if (server.HasExited) throw new InvalidOperationException($"the server exited {server.ExitCode}: {server.StandardError.ReadToEnd()}");
            if (Virtlab.Run(null, tmp.Path, Env(tmp, "1"), "server", "status").ExitCode == 0) return server;
            Thread.Sleep(100);
        }
        server.Kill();
        throw new TimeoutException("the compile server never answered `server status`");
    }

    private static void Stop(TempDir tmp, Process server)
    {
        Virtlab.Run(null, tmp.Path, Env(tmp, "1"), "server", "stop");
        if (!server.WaitForExit(10_000)) server.Kill();
        server.Dispose();
    }

    private static (ProcessResult Run, JsonElement Preparation) RunRecipe(TempDir tmp, string recipe, string server, string cache)
    {
        var json = Path.Combine(tmp.Path, Guid.NewGuid().ToString("N") + ".json");
        var r = Virtlab.Run(Path.Combine(tmp.Path, cache), tmp.Path, Env(tmp, server), "run", recipe, "--json", json);
        Assert.True(r.ExitCode == 0, r.ToString());
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        return (r, doc.RootElement.GetProperty("environment").GetProperty("preparation").Clone());
    }

    [Fact]
    public void A_recipe_compiled_by_the_server_runs_as_one_compiled_in_process_and_the_record_says_which()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("sum.csx", Recipe);
        var inProcess = RunRecipe(tmp, recipe, "0", "cache-a");
        Assert.StartsWith("in-process (server off", inProcess.Preparation.GetProperty("compile").GetString());

        var server = StartServer(tmp);
        try
        {
            var served = RunRecipe(tmp, recipe, "1", "cache-b");
            Assert.StartsWith("server (warm", served.Preparation.GetProperty("compile").GetString());
            Assert.Equal(inProcess.Run.Stdout, served.Run.Stdout);
            Assert.Contains("sum = 21", served.Run.Stdout);

            // A compile error comes back from the server as from the compiler here: same message, exit 2.
            var bad = tmp.File("bad.csx", "Result(\"x\", undefinedThing);\n");
            var viaServer = Virtlab.Run(Path.Combine(tmp.Path, "cache-b"), tmp.Path, Env(tmp, "1"), "run", bad);
            var here = Virtlab.Run(Path.Combine(tmp.Path, "cache-a"), tmp.Path, Env(tmp, "0"), "run", bad);
            Assert.Equal(2, viaServer.ExitCode);
            Assert.Equal(here.Stderr, viaServer.Stderr);

            // The next run is a cache hit, whoever compiled it.
            var cached = RunRecipe(tmp, recipe, "1", "cache-b");
            Assert.Equal("cached", cached.Preparation.GetProperty("compile").GetString());
        }
        finally { Stop(tmp, server); }
    }

    [Fact]
    public void A_killed_server_or_one_that_hangs_up_makes_the_run_compile_in_process()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("sum.csx", Recipe);
        var server = StartServer(tmp);
        server.Kill(); // -9: its socket file stays, nobody listens
        server.WaitForExit();
        server.Dispose();
        var socket = CompileServer.SocketPathIn(Path.Combine(tmp.Path, "xdg", "virtlab", "server"));
        Assert.True(File.Exists(socket), "the killed server's socket file is left behind");

        // No server to start here: only the fallback is under test.
        var afterKill = RunRecipe(tmp, recipe, "1", "cache-a");
        Assert.StartsWith("in-process (", afterKill.Preparation.GetProperty("compile").GetString());
        Assert.Contains("sum = 21", afterKill.Run.Stdout);
        StopTheOneTheRunStarted(tmp);

        // A "server" that accepts and hangs up at once.
        File.Delete(socket);
        using (var fake = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            fake.Bind(new UnixDomainSocketEndPoint(socket));
            fake.Listen(4);
            var hangUp = Task.Run(() => { using var c = fake.Accept(); });
            var afterHangUp = RunRecipe(tmp, recipe, "1", "cache-b");
            Assert.StartsWith("in-process (server failed", afterHangUp.Preparation.GetProperty("compile").GetString());
            Assert.Contains("sum = 21", afterHangUp.Run.Stdout);
            hangUp.Wait(10_000);
        }
        File.Delete(socket);
    }

    [Fact]
    public void A_cold_repl_host_lets_the_server_compile_then_compiles_on_the_same_chain_itself()
    {
        using var tmp = new TempDir();
        var server = StartServer(tmp);
        try
        {
            var env = Env(tmp, "1");
            env["VIRTLAB_HOST_TRACE"] = "1";
            using var repl = new VirtLab.Shell.Tests.Repl.ReplProcess(tmp.Path, [], env);
            repl.Send("var a = 6;");
            repl.Send("a * 7");
            repl.WaitFor("^42$");
            Assert.Matches(@"submit \d+ ms, server \(warm", repl.Stderr);

            // Left idle, the host warms its own Roslyn; from then on it compiles itself, on the chain the server's
            // submissions made (rebuilt from their code), and `a` is still the server-compiled submission's variable.
            for (int i = 1; i <= 20 && repl.Count(@"submit \d+ ms, in-process", stderr: true) == 0; i++)
            {
                Thread.Sleep(2000);
                repl.Send($"a * 2 + {i} - {i}");
                repl.WaitForCount("^12$", i);
            }
            Assert.Matches(@"submit \d+ ms, in-process", repl.Stderr);
            repl.Send("a + 1");
            repl.WaitFor("^7$");
        }
        finally { Stop(tmp, server); }
    }

    /// <summary>The run that found no server started one (detached): wait until it listens, then stop it.</summary>
    private static void StopTheOneTheRunStarted(TempDir tmp)
    {
        var sw = Stopwatch.StartNew();
        while (sw.Elapsed < TimeSpan.FromSeconds(120) && Virtlab.Run(null, tmp.Path, Env(tmp, "1"), "server", "status").ExitCode != 0)
            Thread.Sleep(200);
        Assert.Equal(0, Virtlab.Run(null, tmp.Path, Env(tmp, "1"), "server", "stop").ExitCode);
    }
}
