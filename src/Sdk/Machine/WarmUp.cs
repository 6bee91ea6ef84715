using System.Diagnostics;
using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Machine;

/// <summary>What <see cref="WarmUp.Run"/> did: the backend it used, the paths it ran, how long it took, what failed.</summary>
public sealed record WarmUpReport(string Backend, IReadOnlyList<string> Paths, double Seconds, IReadOnlyList<string> Errors);

/// <summary>
/// Runs the SDK's hot paths once, on small scratch VMs, before a recipe starts: the dirty log (get, clear, manual
/// protect), the dirty ring (harvest, reset, a ring-full exit), <see cref="Vm.Run"/> of the standard workloads (guest
/// code generation, vCPU threads, populate), bitmap count and enumeration, and guest-memory access. With ReadyToRun
/// images this costs a few milliseconds and leaves nothing for the first timed call to pay: method entry fixups,
/// P/Invoke binding, type loads, static constructors and lazily built tables are all done here. The shell calls it
/// on a worker thread (<see cref="Start"/>) while it loads plugins and compiles; the first <see cref="Vm.Create(VmOptions)"/>
/// of the recipe waits for it to end, so a recipe that creates no VM never waits. Bitmap paths come first (they need no
/// VM and take well under a millisecond). Uses the backend <see cref="Backend.Auto"/> picks (the one recipes get).
/// </summary>
public static class WarmUp
{
    static readonly object Gate = new();
    static Task? _pending;
    [ThreadStatic] static bool _onWarmUpThread;

    /// <summary>Starts <see cref="Run"/> on a worker thread; <see cref="Then"/> appends more work (a plugin's warm-up).</summary>
    public static Task<WarmUpReport> Start(Backend backend = Backend.Auto)
    {
        // Silenced: the warm-up's scratch workloads would otherwise draw progress bars over what the user types.
        var task = new Task<WarmUpReport>(() => { _onWarmUpThread = true; using var quiet = Progress.Silence(); return Run(backend); }, TaskCreationOptions.LongRunning);
        lock (Gate) _pending = task;
        task.Start();
        return task;
    }

    /// <summary>Runs <paramref name="work"/> on the warm-up thread after what is already queued (at once when nothing is).</summary>
    public static Task Then(Action work)
    {
        lock (Gate)
        {
            var previous = _pending ?? Task.CompletedTask;
            var next = previous.ContinueWith(_ => { _onWarmUpThread = true; using var quiet = Progress.Silence(); try { work(); } finally { _onWarmUpThread = false; } },
                CancellationToken.None, TaskContinuationOptions.None, TaskScheduler.Default);
            _pending = next;
            return next;
        }
    }

    /// <summary>Waits until the queued warm-up work has ended (returns at once on the warm-up thread itself); returns the seconds waited.</summary>
    public static double WaitForPending()
    {
        Task? p;
        lock (Gate) p = _pending;
        if (p is null || _onWarmUpThread) return 0;
        WasAwaited = true;
        if (p.IsCompleted) return 0;
        var sw = Stopwatch.StartNew();
        try { p.Wait(); } catch (AggregateException) { } // each step reports its own errors
        lock (Gate) WaitedSeconds += sw.Elapsed.TotalSeconds;
        return sw.Elapsed.TotalSeconds;
    }

    /// <summary>Whether code other than the warm-up itself asked for it to end (a <see cref="Vm.Create(VmOptions)"/>): a
    /// process that never did may exit without waiting for it.</summary>
    public static bool WasAwaited { get; private set; }

    /// <summary>How long the process waited for the warm-up in total (the recipe's first Vm.Create, the shell).</summary>
    public static double WaitedSeconds { get; private set; }

    /// <summary>How long the collection after the warm-up took (<see cref="BeforeVm"/>); 0 until it ran.</summary>
    public static double SettleSeconds { get; private set; }

    /// <summary>Whether the collection after the warm-up has run.</summary>
    public static bool Settled => _settled;

    static volatile bool _settled;

    /// <summary>
    /// Called by every <see cref="Vm.Create(VmOptions)"/>: registers the calling thread with the teardown guard (its first
    /// registration costs 50–100 µs), waits for a queued warm-up (<see cref="WaitForPending"/>), then,
    /// once per process and only when a warm-up was started, runs one full blocking compacting collection. The shell's
    /// start (plugin loading, Roslyn, the warm-up's scratch VMs) leaves a heap whose next collection would otherwise land
    /// inside the recipe's first timed calls — measured: a 16 ms gen-2 collection inside a first DirtyRing.Harvest that
    /// allocates its list, against 0.1 ms without. Here it costs a few milliseconds before the recipe's first VM exists.
    /// </summary>
    internal static void BeforeVm()
    {
        SlotGuard.PrepareThread(); // the thread that makes VMs is the one that times their calls
        WaitForPending();
        if (_settled || _onWarmUpThread) return;
        lock (Gate)
        {
            if (_settled || _pending is null) return;
            var sw = Stopwatch.StartNew();
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
            GC.WaitForPendingFinalizers();
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
            SettleSeconds = sw.Elapsed.TotalSeconds;
            _settled = true;
        }
    }

    /// <summary>Runs the SDK's hot paths once on scratch objects (what the shell does before a recipe); returns what ran.</summary>
    public static WarmUpReport Run(Backend backend = Backend.Auto)
    {
        var sw = Stopwatch.StartNew();
        var paths = new List<string>();
        var errors = new List<string>();
        var used = backend == Backend.Auto ? (Vm.IsKvmUsable(out _) ? Backend.Kvm : Backend.Sim) : backend;
        void Step(string name, Action a)
        {
            try { a(); paths.Add(name); }
            catch (Exception e) { errors.Add($"{name}: {e.GetType().Name}: {e.Message}"); }
        }

        Step("DirtyBitmap (count, set pages, runs, set, clear)", () =>
        {
            var b = new DirtyBitmap(4096);
            for (long p = 0; p < b.Pages; p += 7) b.Set(p);
            long sink = 0;
            for (int i = 0; i < 2; i++)
            {
                sink += b.Count + b.CountRange(1, 100);
                foreach (var p in b.SetPages) sink += p;
                foreach (var r in b.Runs) sink += r.Count;
                var c = b.Clone();
                c.SetAll(); c.ClearAll();
            }
            GC.KeepAlive(sink);
        });
        Step("dirty log (get, clear, manual protect), Vm.Run, guest memory", () =>
        {
            using var vm = Vm.Create(new VmOptions(2.MiB()) { Backend = used, ManualProtect = true, LogDirtyPages = true });
            var slot = vm.TestSlot;
            var bitmap = new DirtyBitmap(slot.Pages);
            long sink = 0;
            Span<byte> scratch = stackalloc byte[16];
            for (int i = 0; i < 2; i++)
            {
                vm.Run(Workload.Write(stride: 4096));
                vm.Run(Workload.Read(stride: 4096));
                slot.GetDirtyLog(bitmap);
                sink += slot.GetDirtyLog().Count;
                var mask = bitmap.Clone();
                slot.ClearDirtyLog(mask);
                slot.ClearDirtyLog(0, 64);
                sink += bitmap.Count + bitmap.CountRange(0, 64);
                foreach (var p in bitmap.SetPages) sink += p;
                foreach (var r in bitmap.Runs) sink += r.Count;
                mask.SetAll();
                mask.ClearAll();
                var memory = vm.Memory;
                memory.Write<ulong>(slot.Gpa, (ulong)sink);
                sink += (long)memory.Read<ulong>(slot.Gpa);
                memory.Write<uint>(slot.Gpa + 16, (uint)sink);
                sink += memory.Read<uint>(slot.Gpa + 16);
                memory.Write<byte>(slot.Gpa + 20, (byte)sink);
                sink += memory.Read<byte>(slot.Gpa + 20);
                memory.Write(slot.Gpa + 8, scratch);
                memory.Read(slot.Gpa + 8, scratch);
                sink += memory.Span(slot.Gpa, 64)[0];
                memory.Fill(slot.Gpa, 4096, 0);
            }
            vm.Run(Workload.DirtyLogPerf(iterations: 1));
            GC.KeepAlive(sink);
        });
        Step("dirty ring (harvest, reset, ring-full exits)", () =>
        {
            using var vm = Vm.Create(new VmOptions(2.MiB()) { Backend = used, LogDirtyPages = true, DirtyRingBytes = 4.KiB() });
            for (int i = 0; i < 2; i++)
            {
                vm.Run(Workload.Write(stride: 4096));
                vm.DirtyRing!.Harvest();
                vm.DirtyRing.Reset();
                vm.Run(Workload.Write(stride: 64 * 4096));
                vm.DirtyRing.HarvestBitmaps();
                vm.DirtyRing.Reset();
            }
        });
        return new WarmUpReport(used.ToString(), paths, sw.Elapsed.TotalSeconds, errors);
    }
}
