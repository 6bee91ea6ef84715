using System.Collections.Immutable;
using VirtLab.Sdk.Measure;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Sdk.Machine;

/// <summary>Workloads: validation into a <see cref="WorkloadPlan"/>, and the one exclusive run through which all guest code goes.</summary>
public abstract partial class Vm
{
    // ---- workloads ------------------------------------------------------------------------------

    /// <summary>Checks <paramref name="workload"/> against this VM and resolves its range and per-vCPU slices.</summary>
    public WorkloadPlan Plan(Workload workload)
    {
        ThrowIfDisposed();
        ArgumentNullException.ThrowIfNull(workload);
        var w = workload;
        VmOptions.CheckDefined(w.Order, nameof(Workload.Order));
        VmOptions.CheckDefined(w.Sharing, nameof(Workload.Sharing));
        VmOptions.CheckDefined(w.Roles, nameof(Workload.Roles));
        if (w.Stride <= 0 || w.Stride % 8 != 0)
            throw new ArgumentException($"stride must be a positive multiple of 8 bytes (accesses are 8 bytes); got {w.Stride}", nameof(workload));
        if (w.Offset < 0 || w.Offset % 8 != 0)
            throw new ArgumentException($"offset must be a non-negative multiple of 8; got {w.Offset}", nameof(workload));
        if (w.WritePercent is < 0 or > 100)
            throw new ArgumentException($"write percentage must be 0 … 100; got {w.WritePercent}", nameof(workload));
        if (w.Passes is < 1 or > Workload.MaxPasses)
            throw new ArgumentException($"passes must be 1 … {Workload.MaxPasses:N0} (each pass's time is recorded per vCPU); got {w.Passes:N0}. " +
                "For an open-ended run, use many passes and cancel it", nameof(workload));
        foreach (var a in w.EffectiveAccesses)
        {
            VmOptions.CheckDefined(a.Op, "StrideAccess.Op");
            if (a.Offset < 0 || a.Offset % 8 != 0 || a.Step < 0 || a.Step % 8 != 0 || a.Count < 1)
                throw new ArgumentException($"{a}: offset and step must be non-negative multiples of 8 and count at least 1", nameof(workload));
            // Int128: huge offsets or steps must not wrap around into a small, "valid" end.
            var end = (Int128)w.Offset + a.Offset + (Int128)(a.Count - 1) * a.Step + 8;
            if (end > w.Stride)
                throw new ArgumentException($"{a} with offset {w.Offset} reaches byte {end} of a {w.Stride}-byte stride; accesses must stay inside their stride", nameof(workload));
        }

        ulong gpa;
        long length;
        if (w.Gpa is { } g)
        {
            var first = FindSlotAt(g) ?? throw new ArgumentOutOfRangeException(nameof(workload),
                $"workload range starts at 0x{g:x}, outside guest memory; memslots: {string.Join("; ", SlotsSnapshot)}");
            gpa = g;
            length = w.Length ?? (long)(first.EndGpa - g);
        }
        else
        {
            var s = Slot(w.Slot);
            gpa = s.Gpa;
            length = w.Length ?? s.Size.Bytes;
        }
        if (length < w.Stride)
            throw new ArgumentException($"workload range length {length} must hold at least one stride of {w.Stride} bytes", nameof(workload));
        if (FindSlotAt(gpa) is { IsSystem: true })
            throw new ArgumentException(
                $"workload range starts at 0x{gpa:x}, inside system slot 0, which holds the backend's code, stacks and page tables; use the test slot or another memslot", nameof(workload));
        var covered = new List<MemSlot>();
        for (ulong at = gpa; at < gpa + (ulong)length;)
        {
            var s = FindSlotAt(at) ?? throw new ArgumentOutOfRangeException(nameof(workload),
                $"workload range [0x{gpa:x}, 0x{gpa + (ulong)length:x}) is not all guest memory: nothing at 0x{at:x}; memslots: {string.Join("; ", SlotsSnapshot)}");
            covered.Add(s);
            at = s.EndGpa;
        }
        return new WorkloadPlan(w, Vcpus, gpa, length, covered);
    }

    /// <summary>
    /// Runs <paramref name="workload"/> on all vCPUs and waits for it. With <see cref="Workload.SyncEachPass"/>,
    /// <paramref name="afterPass"/>(pass) runs on this thread after each pass while every vCPU waits at the sync point
    /// (e.g. to get/clear the dirty log between dirty_log_perf_test iterations); without it there is no sync point
    /// and <paramref name="afterPass"/> is not called (on either backend). Only one workload (or, on KVM, raw-assembly
    /// program) runs on a VM at a time.
    /// </summary>
    public WorkloadResult Run(Workload workload, Action<int>? afterPass = null, CancellationToken cancellation = default)
    {
        var plan = Plan(workload);
        using var progress = plan.Progress = Measure.Progress.Start(workload.Name ?? "workload", (long)plan.Workload.Passes * plan.Vcpus, "vCPU passes");
        return Exclusive(cancellation, token => RunCore(plan, afterPass, token));
    }

    /// <summary>
    /// Runs <paramref name="body"/> as the VM's one guest run: while it runs <see cref="IsRunning"/> is true, a second run
    /// is refused, memslots cannot be removed or resized, and <see cref="Dispose"/> waits for it. The token passed to
    /// <paramref name="body"/> fires on <paramref name="cancellation"/> or on dispose. Every way of running guest code
    /// (workloads, the KVM backend's raw assembly) goes through here.
    /// </summary>
    private protected T Exclusive<T>(CancellationToken cancellation, Func<CancellationToken, T> body)
    {
        ThrowIfDisposed();
        if (Interlocked.CompareExchange(ref _running, 1, 0) != 0)
            throw new InvalidOperationException("a workload is already running on this VM; wait for it (or cancel it) first");
        try
        {
            // Dispose sets `disposed` before it looks at `running`; we set `running` before looking at `disposed`
            // (both interlocked), so either Dispose waits for this run or this run sees the VM disposed.
            ThrowIfDisposed();
            _runThread = Environment.CurrentManagedThreadId;
            var ambient = RunCancellation.Current; // Ctrl+C of the recipe or REPL submission, even when no token was passed
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(cancellation, ambient, _disposeCts.Token);
            try
            {
                return body(linked.Token);
            }
            catch (OperationCanceledException) when (IsDisposed && !cancellation.IsCancellationRequested && !ambient.IsCancellationRequested)
            {
                throw new ObjectDisposedException(null, $"this {Backend} VM was disposed while a workload was running on it, which stopped the run");
            }
        }
        finally
        {
            _runThread = 0;
            Volatile.Write(ref _running, 0);
        }
    }

    /// <summary><see cref="Run"/> on a worker thread.</summary>
    public Task<WorkloadResult> RunAsync(Workload workload, Action<int>? afterPass = null, CancellationToken cancellation = default)
        => Task.Factory.StartNew(() => Run(workload, afterPass, cancellation), cancellation, TaskCreationOptions.LongRunning, TaskScheduler.Default);
}
