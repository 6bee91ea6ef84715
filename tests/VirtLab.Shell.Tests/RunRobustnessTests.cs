using System.Diagnostics;
using System.Text.Json;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>`virtlab run` never dies without a word: Ctrl+C stops untokened SDK calls, a recipe's own thread that fails
/// is recorded, a run record that cannot be written fails the run. The VMs here are simulator VMs (the ambient
/// cancellation and the run end are backend-neutral).</summary>
public sealed class RunRobustnessTests
{
    [Fact]
    public async Task One_SIGINT_stops_an_untokened_long_vm_Run_with_exit_1_and_a_run_record()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("long.csx", """
            var vm = Vm.Create(new VmOptions(1.MiB()) { Backend = Backend.Sim });
            Console.WriteLine("running");
            vm.Run(Workload.Write(stride: 8, passes: 1_000_000));   // no token: minutes of work
            Result("finished", true);
            """);
        var json = Path.Combine(tmp.Path, "run.json");
        var psi = new ProcessStartInfo("dotnet") { RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = true, WorkingDirectory = tmp.Path };
        foreach (var a in new[] { Virtlab.Dll, "run", "--json", json, recipe }) psi.ArgumentList.Add(a);
        psi.Environment["VIRTLAB_CACHE"] = Path.Combine(tmp.Path, ".cache");
        psi.Environment["NO_COLOR"] = "1";
        using var p = Process.Start(psi)!;
        p.StandardInput.Close();
        var stderr = p.StandardError.ReadToEndAsync();
        Assert.Equal("running", p.StandardOutput.ReadLine());
        Thread.Sleep(200); // inside vm.Run
        using (var kill = Process.Start("kill", ["-INT", p.Id.ToString()])) kill.WaitForExit();
        var stdout = p.StandardOutput.ReadToEndAsync();
        if (!p.WaitForExit(TimeSpan.FromSeconds(90))) { p.Kill(true); Assert.Fail("one SIGINT did not stop vm.Run"); }
        var r = new ProcessResult(p.ExitCode, await stdout, await stderr);
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Equal("virtlab run: cancelled (Ctrl+C)\n", r.Stderr);
        Assert.DoesNotContain("finished", r.Stdout);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        Assert.Equal(1, doc.RootElement.GetProperty("exitCode").GetInt32());
        Assert.Contains("OperationCanceledException", doc.RootElement.GetProperty("error").GetString());
    }

    [Fact]
    public void An_exception_on_a_thread_the_recipe_started_is_recorded_and_exits_1()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("thread.csx", """
            Result("before", 1);
            var t = new Thread(() => throw new InvalidOperationException("device thread failed"));
            t.Start();
            t.Join();
            Thread.Sleep(10_000);
            Result("after", 2);
            """);
        var json = Path.Combine(tmp.Path, "run.json");
        var r = Virtlab.Run(null, tmp.Path, "run", "--json", json, recipe);
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.StartsWith("virtlab run: a thread the recipe started failed, which ends the process:\n", r.Stderr);
        Assert.Contains("System.InvalidOperationException: device thread failed", r.Stderr);
        Assert.Equal("before = 1\n", r.Stdout);
        using var doc = JsonDocument.Parse(File.ReadAllText(json));
        Assert.Equal(1, doc.RootElement.GetProperty("exitCode").GetInt32());
        Assert.Contains("device thread failed", doc.RootElement.GetProperty("error").GetString());
        Assert.Equal(1, doc.RootElement.GetProperty("results").GetProperty("before").GetInt32());
    }

    [Fact]
    public void An_unobserved_task_exception_fails_the_run()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("task.csx", """
            // Waits for the fault without observing it (ContinueWith never reads the exception); the task is garbage after.
            Task.Run(() => throw new InvalidOperationException("nobody awaited me")).ContinueWith(_ => { }).Wait();
            """);
        var r = Virtlab.Run(null, tmp.Path, "run", recipe);
        Assert.True(r.ExitCode == 1, r.ToString());
        Assert.Contains("nobody awaited me", r.Stderr);
    }

    [Fact]
    public void A_run_record_path_that_cannot_be_written_is_a_usage_error_before_the_run()
    {
        using var tmp = new TempDir();
        var recipe = tmp.File("r.csx", "Console.WriteLine(\"ran\");\n");
        var folder = Directory.CreateDirectory(Path.Combine(tmp.Path, "out")).FullName;
        var r = Virtlab.Run(null, tmp.Path, "run", "--json", folder, recipe);
        Assert.True(r.ExitCode == 3, r.ToString());
        Assert.Equal("", r.Stdout);
        Assert.Equal($"virtlab run: --json {folder}: is a folder; give a file path for the run record; nothing ran\n", r.Stderr);

        var underFile = Path.Combine(recipe, "run.json"); // a "folder" that is a file
        var u = Virtlab.Run(null, tmp.Path, "run", "--json", underFile, recipe);
        Assert.True(u.ExitCode == 3, u.ToString());
        Assert.StartsWith($"virtlab run: --json {underFile}: cannot be written (", u.Stderr);
    }
}
