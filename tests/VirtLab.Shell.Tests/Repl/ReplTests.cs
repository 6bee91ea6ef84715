using Xunit;
using System.Diagnostics;
using VirtLab.Shell.Repl;

namespace VirtLab.Shell.Tests.Repl;

// One collection: every test starts a REPL and its evaluation hosts; on a small machine running them
// one after another is faster than all at once.
[CollectionDefinition("repl", DisableParallelization = true)]
public sealed class ReplCollection;

[Collection("repl")]
public sealed class ReplTests
{
    [Fact]
    public void State_survives_across_submissions()
    {
        using var repl = new ReplProcess();
        repl.Send("var x = 40;");
        repl.Send("x + 2");
        repl.WaitFor("^42$");
        repl.Send("x = x * 10;");
        repl.Send("$\"x is {x}\"");
        repl.WaitFor("x is 400");
        repl.Send("#exit");
        Assert.Equal(0, repl.WaitForExit());
    }

    [Fact]
    public void Incomplete_submission_continues_on_the_next_line()
    {
        using var repl = new ReplProcess();
        repl.Send("int Add(int a, int b)");
        repl.Send("{");
        repl.Send("    return a + b;");
        repl.Send("}");
        repl.Send("var numbers = new[] {");
        repl.Send("    1, 2,");
        repl.Send("    3 };");
        repl.Send("Add(numbers.Sum(), 100)");
        repl.WaitFor("^106$");
        repl.Send("var never = \"unterminated");   // never complete: two empty lines end it
        repl.Send("");
        repl.Send("");
        repl.WaitFor("error CS1010", stderr: true);
        repl.CloseInput(); // end of input leaves like #exit
        Assert.Equal(1, repl.WaitForExit()); // piped: a failed submission makes the exit code 1
    }

    [Fact]
    public void Compile_errors_carry_positions_and_the_session_goes_on()
    {
        using var repl = new ReplProcess();
        repl.Send("var ok = 5;");
        repl.Send("var bad = ;");
        repl.WaitFor(@"\(1,11\): error CS1525", stderr: true);
        repl.Send("throw new System.InvalidOperationException(\"user threw\");");
        repl.WaitFor("InvalidOperationException: user threw", stderr: true);
        repl.Send("ok * 2");
        repl.WaitFor("^10$");
    }

    [Fact]
    public async Task Save_writes_a_recipe_that_runs()
    {
        using var repl = new ReplProcess();
        var recipe = Path.Combine(repl.Home, "session.csx");
        repl.Send("var y = 6;");
        repl.Send("y * 7");
        repl.Send("var broken = ;");               // failed submissions are not part of the recipe
        repl.Send("Console.WriteLine($\"answer={y * 7}\");");
        repl.WaitFor("^answer=42$");
        repl.Send($"#save {recipe}");
        repl.WaitFor("saved 3 submissions");
        var text = File.ReadAllText(recipe);
        Assert.DoesNotContain("broken", text);

        // Runnable: a fresh REPL loads it, and `virtlab run` runs it.
        using var again = new ReplProcess();
        again.Send($"#load {recipe}");
        again.WaitFor("^answer=42$");
        again.Send("y + 1");
        again.WaitFor("^7$");

        // Its own recipe cache inside the temp HOME: never the developer's ~/.cache/virtlab.
        var run = await Task.Run(() => Virtlab.Run(Path.Combine(repl.Home, "cache"), repl.Home, "run", recipe));
        Assert.True(run.ExitCode == 0, $"{run}\n--- recipe ---\n{text}");
        Assert.Contains("answer=42", run.Stdout);
    }

    [Fact]
    public void Meta_commands_help_plugins_reload_and_reset()
    {
        using var repl = new ReplProcess();
        repl.Send("#help");
        repl.WaitFor(@"#save FILE\s+write the session's successful submissions");
        repl.Send("#plugins");
        repl.WaitFor("^no plugins$");
        repl.Send("var r = 5;");
        repl.Send("#reload");
        repl.WaitFor("reloaded \\(no plugins\\); replayed 1 submission in \\d+ ms");
        repl.Send("r");
        repl.WaitFor("^5$");
        repl.Send("#reset");
        repl.WaitFor("session reset: fresh host, no submissions");
        repl.Send("r");
        repl.WaitFor("CS0103: The name 'r' does not exist", stderr: true);
        // Ctrl+C at the prompt in line mode: nothing to clear, the REPL goes on. The front end handles SIGINT on its
        // signal thread, asynchronously to reading stdin, so a line sent right after the signal may already be under
        // evaluation when the handler runs — and is then (rightly) cancelled. Line mode prints nothing for a Ctrl+C at
        // the prompt, so there is nothing to wait for: give the handler a moment, and accept the cancelled race.
        repl.Interrupt();
        Thread.Sleep(200);
        repl.Send("1 + 1");
        repl.WaitUntil(() => repl.Count("^2$") > 0 || repl.Count("^cancelled$", stderr: true) > 0, "/^2$/ on stdout or /^cancelled$/ on stderr");
        if (repl.Count("^cancelled$", stderr: true) > 0)
        {
            repl.Send("1 + 1");
            repl.WaitFor("^2$");
        }
        Assert.Equal(1, repl.Count("^2$"));
        Assert.Equal(2, repl.Count("^↻")); // the #reload and the #reset: the Ctrl+C restarted no host
        Assert.DoesNotContain("host killed", repl.Stdout);
    }

    [Fact]
    public void History_is_persisted_under_HOME()
    {
        using var repl = new ReplProcess();
        repl.Send("var remembered = 1;");
        repl.Send("int Twice(int v)");
        repl.Send("    => 2 * v;");
        repl.Send("#exit");
        Assert.Equal(0, repl.WaitForExit());
        var history = File.ReadAllText(Path.Combine(repl.Home, ".virtlab", "history"));
        Assert.Contains("var remembered = 1;\n", history);
        Assert.Contains(@"int Twice(int v)\n    => 2 * v;", history); // one entry per submission
    }

    [Fact]
    public async Task Completion_comes_from_the_host()
    {
        using var host = await HostClient.StartAsync([], ReplProcess.VirtlabDll);
        var submit = await host.SendAsync(new Request { Kind = RequestKind.Submit, Code = "var sb = new System.Text.StringBuilder();" });
        Assert.Equal(SubmitStatus.Ok, submit.Status);

        var members = await host.SendAsync(new Request { Kind = RequestKind.Complete, Code = "sb.App", Position = 6 });
        Assert.Contains(members.Completions!, c => c.Text == "Append");
        Assert.Equal(3, members.ReplaceStart);

        var globals = await host.SendAsync(new Request { Kind = RequestKind.Complete, Code = "Ex", Position = 2 });
        Assert.Contains(globals.Completions!, c => c.Text == "Expect");
        await host.ShutdownAsync();
    }

    [Fact]
    public void Hot_swap_loads_the_new_build_and_replays_the_session()
    {
        var root = Directory.CreateTempSubdirectory("virtlab-repl-plugins-").FullName;
        try
        {
            var dir = TestPlugin.Build(root, "1.0.0", "hello");
            using var repl = new ReplProcess("--plugins", dir);
            repl.Send("var who = \"world\";");
            repl.Send("Greeter.Hello(who)");
            repl.WaitFor("^\"hello world\"$"); // strings render quoted

            TestPlugin.Build(root, "2.0.0", "bonjour");
            repl.WaitFor($"reloaded {TestPlugin.Name} 1.0.0 → 2.0.0; replayed 2 submissions in \\d+ ms");
            repl.Send("Greeter.Hello(who) + \" v\" + Greeter.Version");
            repl.WaitFor("^\"bonjour world v2\"$");
            Assert.Equal(1, repl.Count("hello world")); // the replay did not print again
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [Fact]
    public void A_plugin_folder_that_appears_under_a_watched_root_is_loaded_with_a_notice()
    {
        var root = Directory.CreateTempSubdirectory("virtlab-repl-plugins-").FullName;
        try
        {
            using var repl = new ReplProcess("--plugins", root); // a root of plugin folders, empty for now
            repl.Send("var who = \"world\";");
            repl.Send("who.Length");
            repl.WaitFor("^5$");

            TestPlugin.Build(root, "1.0.0", "hello");
            repl.WaitFor($"reloaded {TestPlugin.Name} 1.0.0 \\(new plugin\\); replayed 2 submissions in \\d+ ms");
            repl.Send("Greeter.Hello(who)");
            repl.WaitFor("^\"hello world\"$");

            // A rebuild that keeps the version: the notice tells the two builds apart.
            TestPlugin.Build(root, "1.0.0", "salut");
            repl.WaitFor($"reloaded {TestPlugin.Name} 1.0.0 \\(build [0-9a-f]{{8}} → [0-9a-f]{{8}}\\); replayed 3 submissions in \\d+ ms");
            repl.Send("Greeter.Hello(who)");
            repl.WaitFor("^\"salut world\"$");
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [Fact]
    public async Task Completion_offers_plugin_globals_and_their_members()
    {
        var root = Directory.CreateTempSubdirectory("virtlab-repl-plugins-").FullName;
        try
        {
            var dir = TestPlugin.Build(root, "1.0.0", "hello");
            using var host = await HostClient.StartAsync([dir], ReplProcess.VirtlabDll);
            var info = await host.SendAsync(new Request { Kind = RequestKind.PluginsInfo });
            Assert.Contains(info.Plugins!, p => p.Name == TestPlugin.Name && p.Status == "Loaded" && p.Version == "1.0.0");
            var global = await host.SendAsync(new Request { Kind = RequestKind.Complete, Code = "Gree", Position = 4 });
            Assert.Contains(global.Completions!, c => c.Text == "Greeter");
            var members = await host.SendAsync(new Request { Kind = RequestKind.Complete, Code = "Greeter.", Position = 8 });
            Assert.Contains(members.Completions!, c => c.Text == "Hello");
            await host.ShutdownAsync();
        }
        finally { Directory.Delete(root, recursive: true); }
    }

    [Fact]
    public void Ctrl_C_stops_a_runaway_loop_and_keeps_earlier_variables()
    {
        using var repl = new ReplProcess();
        repl.Send("var before = 7;");
        repl.Send("Console.WriteLine(\"spinning\"); while (true) { }");
        repl.WaitFor("^spinning$");
        repl.Interrupt();
        repl.WaitFor("did not stop within 1 s of Ctrl\\+C: host killed; replayed 1 submission in \\d+ ms");
        repl.Send("before * 6");
        repl.WaitFor("^42$");
    }

    [Fact]
    public void Ctrl_C_cancels_cooperatively_through_the_Cancellation_token()
    {
        using var repl = new ReplProcess();
        repl.Send("var kept = 3;");
        repl.Send("Console.WriteLine(\"waiting\"); Cancellation.WaitHandle.WaitOne(); Cancellation.ThrowIfCancellationRequested();");
        repl.WaitFor("^waiting$");
        repl.Interrupt();
        repl.WaitFor("^cancelled$", stderr: true);
        repl.Send("kept + 1");
        repl.WaitFor("^4$");
        Assert.DoesNotContain("host killed", repl.Stdout);
    }

    [Fact]
    public void A_host_that_dies_again_after_each_replay_is_restarted_three_times_then_left_alone()
    {
        using var repl = new ReplProcess();
        // Succeeds, then kills its host from a background thread: every replay brings the crash back.
        repl.Send("new Thread(() => { Thread.Sleep(500); Environment.FailFast(\"background crash\"); }).Start();");
        repl.WaitFor("again right after a restart; not restarting until the next evaluation", stderr: true);
        repl.Send("#reset");
        repl.WaitFor("session reset: fresh host, no submissions");
        // Counted only now: stdout and stderr are read separately, so the third notice on stdout may trail the stderr
        // line above; every notice written before the reset's is in once the reset's own line is.
        Assert.Equal(3, repl.Count(@"^↻ evaluation host died \(signal 6 SIGABRT\); replayed"));
        repl.Send("1 + 1");
        repl.WaitFor("^2$");
    }

    [Fact]
    public void Plugin_exception_and_native_crash_are_reported_and_the_REPL_survives()
    {
        var root = Directory.CreateTempSubdirectory("virtlab-repl-plugins-").FullName;
        try
        {
            var dir = TestPlugin.Build(root, "1.0.0", "hello");
            using var repl = new ReplProcess("--plugins", dir);
            repl.Send("var survivor = 11;");
            repl.Send("Greeter.Throw()");
            repl.WaitFor("InvalidOperationException: plugin threw on purpose", stderr: true);
            repl.Send("Greeter.Crash()");
            repl.WaitFor(@"evaluation host died \(signal 6 SIGABRT\) during the evaluation; replayed 1 submission");
            repl.Send("survivor + 31");
            repl.WaitFor("^42$");
        }
        finally { Directory.Delete(root, recursive: true); }
    }
}
