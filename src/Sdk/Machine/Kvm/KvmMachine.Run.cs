using System.Collections.Concurrent;
using System.Runtime.ExceptionServices;
using System.Text;
using VirtLab.Sdk.Native;

namespace VirtLab.Sdk.Machine.Kvm;

/// <summary>The run: one thread per vCPU in KVM_RUN, each exit decoded (<see cref="KvmExit"/>) and dispatched here.</summary>
internal sealed partial class KvmMachine
{
    /// <summary>
    /// Run one guest program on every vCPU (rdi = vCPU index, rsp = its stack, long mode) until each signals
    /// done, one fails, or the token fires. Each vCPU runs KVM_RUN on its own thread; <paramref name="onCaller"/>
    /// (if any) runs on the calling thread meanwhile, with a token that fires when a vCPU fails. With
    /// <paramref name="onCallerThread"/> a single vCPU with no <paramref name="onCaller"/> runs on the calling thread
    /// instead (its callbacks run there too): no thread to start and no wake-up at its end, each of which cost up to
    /// milliseconds of scheduling latency on a busy host (measured: a 16 MiB populate took 1.2–1.6 × the bare ioctls'
    /// time at load 15 on 2 cores through a vCPU thread and its sync handoffs).
    /// </summary>
    public void Run(ReadOnlySpan<byte> code, ulong entryOffset, GuestCallbacks callbacks, CancellationToken token,
        Action<CancellationToken>? onCaller = null, bool onCallerThread = false)
    {
        ThrowIfDisposed();
        if ((ulong)code.Length > SystemLayout.CodeSize)
            throw new ArgumentException($"guest program is {code.Length} bytes; the code area holds {SystemLayout.CodeSize}");
        if (entryOffset >= (ulong)code.Length) throw new ArgumentOutOfRangeException(nameof(entryOffset));
        if (!Monitor.TryEnter(_runLock)) throw new InvalidOperationException("a guest program is already running on this VM");
        try
        {
            ThrowIfDisposed();
            _ = Layout;
            var vcpus = EnsureVcpus();
            HasRun = true;
            bool newCr3 = PreparePageTables();
            // Safe because the code area [CodeGpa, CodeGpa + CodeSize) lies in the registered system slot and the length is checked above.
            unsafe { code.CopyTo(new Span<byte>((byte*)_sysHost + SystemLayout.CodeGpa, code.Length)); }
            foreach (var v in vcpus)
            {
                var s = v.GetSregs();
                if (newCr3 || s.cr3 != _cr3 || (s.efer & (1 << 10)) == 0)
                {
                    KvmPageTables.SetLongMode(ref s, _cr3);
                    v.SetSregs(s);
                }
                v.SetRegs(new kvm_regs { rip = SystemLayout.CodeGpa + entryOffset, rsp = SystemLayout.StackTop(v.Index), rdi = (ulong)v.Index, rflags = 0x2 });
            }

            using var failed = CancellationTokenSource.CreateLinkedTokenSource(token, _disposeCts.Token);
            if (onCallerThread && onCaller is null && vcpus.Length == 1)
            {
                RunOnCallerThread(vcpus[0], callbacks, failed.Token, token);
                return;
            }
            var errors = new ConcurrentQueue<Exception>(); // in the order they happened
            var threads = new Thread[vcpus.Length];
            using var go = new ManualResetEventSlim(false);
            foreach (var v in vcpus)
            {
                threads[v.Index] = new Thread(() =>
                {
                    go.Wait(); // all threads exist before any guest code (and its callbacks) runs
                    try { RunLoop(v, callbacks, failed.Token); }
                    catch (Exception e)
                    {
                        errors.Enqueue(e);
                        try { failed.Cancel(); } catch (ObjectDisposedException) { }
                    }
                }, 256 * 1024) { IsBackground = true, Name = $"vcpu{v.Index}" };
            }
            // Cancellation (user token, dispose, or a failing sibling) kicks every vCPU out of KVM_RUN.
            using var reg = failed.Token.Register(() => { foreach (var v in vcpus) v.RequestStop(); });
            foreach (var t in threads) t.Start();
            _runThreads = threads;
            go.Set();
            Exception? callerError = null;
            try { onCaller?.Invoke(failed.Token); }
            catch (Exception e)
            {
                callerError = e;
                try { failed.Cancel(); } catch (ObjectDisposedException) { }
            }
            foreach (var t in threads) t.Join();

            // The first real failure is the cause; siblings stopped because of it (or failed the same way later).
            if (errors.FirstOrDefault(e => e is not OperationCanceledException) is { } cause)
                ExceptionDispatchInfo.Throw(cause);
            if (callerError is not null and not OperationCanceledException)
                ExceptionDispatchInfo.Throw(callerError);
            token.ThrowIfCancellationRequested();
            if (_disposeCts.IsCancellationRequested) throw new ObjectDisposedException(nameof(KvmMachine), "the VM was disposed while the guest ran");
            if (callerError != null) ExceptionDispatchInfo.Throw(callerError);
            if (errors.TryPeek(out var first)) ExceptionDispatchInfo.Throw(first);
        }
        finally
        {
            _runThreads = null;
            if (_deferredVcpu is { } d) { _deferredVcpu = null; d.Dispose(); } // disposed from its own thread
            Monitor.Exit(_runLock);
        }
    }

    /// <summary>
    /// The one vCPU's loop on the calling thread. Dispose from another thread stops it (immediate_exit + kick, as for a
    /// vCPU thread) and waits for <see cref="_callerLoopDone"/> instead of joining a thread; from inside a callback on
    /// this thread it defers the vCPU's disposal to the end of <see cref="Run"/>, like a vCPU thread's.
    /// </summary>
    private void RunOnCallerThread(KvmVcpu v, GuestCallbacks callbacks, CancellationToken failed, CancellationToken token)
    {
        using var done = new ManualResetEventSlim(false);
        _callerLoopDone = done;
        _callerLoopThread = Thread.CurrentThread;
        using var reg = failed.Register(v.RequestStop);
        _runThreads = [Thread.CurrentThread];
        try { RunLoop(v, callbacks, failed); }
        catch (OperationCanceledException) when (token.IsCancellationRequested || _disposeCts.IsCancellationRequested)
        {
            token.ThrowIfCancellationRequested(); // as from vCPU threads: the caller's token, else the dispose
            throw new ObjectDisposedException(nameof(KvmMachine), "the VM was disposed while the guest ran");
        }
        finally
        {
            _runThreads = null;
            done.Set();
            _callerLoopThread = null;
            _callerLoopDone = null;
        }
    }

    private volatile ManualResetEventSlim? _callerLoopDone;
    private volatile Thread? _callerLoopThread;

    [ThreadStatic] private static KvmVcpu? _threadVcpu;

    /// <summary>Whether the calling thread is one of this machine's vCPU threads (inside a guest callback).</summary>
    public bool IsVcpuThread => _threadVcpu is { } v && Array.IndexOf(_vcpus ?? [], v) >= 0;

    private void RunLoop(KvmVcpu v, GuestCallbacks cb, CancellationToken token)
    {
        _threadVcpu = v;
        v.EnterRunThread();
        try
        {
            while (true)
            {
                if (token.IsCancellationRequested || v.StopRequested) throw new OperationCanceledException(token);
                if (Dispatch(v, v.Run(), cb, token)) return;
            }
        }
        finally
        {
            v.LeaveRunThread();
            v.ClearImmediateExit();
            _threadVcpu = null;
        }
    }

    /// <summary>Serve one exit; true when the vCPU's program is finished. Exits the ABI does not allow fail the run.</summary>
    private bool Dispatch(KvmVcpu v, KvmExit exit, GuestCallbacks cb, CancellationToken token)
    {
        switch (exit)
        {
            case KvmExit.Io io:
                return HandleUcall(v, io, cb, token);
            case KvmExit.Hlt:
                cb.OnDone?.Invoke(v.Index);
                return true; // no in-kernel irqchip: HLT ends the program like ucall done
            case KvmExit.Interrupted:
                v.ClearImmediateExit(); // a kick or immediate_exit: the loop sees whether a stop was asked for
                return false;
            case KvmExit.Intr:
                return false;
            case KvmExit.DirtyRingFull:
                OnRingFull(v);
                return false;
            case KvmExit.Mmio m:
                throw Guest(v, exit, $"guest {(m.IsWrite ? "wrote" : "read")} {m.Length} bytes at gpa 0x{m.PhysAddr:x}, which no memslot backs");
            case KvmExit.Shutdown:
                throw Guest(v, exit, "triple fault (an exception with no usable IDT, e.g. a page fault on unmapped memory)");
            case KvmExit.FailEntry f:
                throw Guest(v, exit, $"VM entry failed: hardware_entry_failure_reason 0x{f.HardwareReason:x} on cpu {f.Cpu}");
            case KvmExit.InternalError e:
                throw Guest(v, exit, e.SuberrorName + (e.Data.Length > 0 ? "; data: " + string.Join(" ", e.Data.Select(d => $"0x{d:x}")) : ""));
            case KvmExit.SystemEvent s:
                throw Guest(v, exit, $"system event type {s.Type}");
            default:
                throw Guest(v, exit, $"exit reason {(uint)exit.Reason} is not expected by the VirtLab guest ABI");
        }
    }

    private KvmGuestException Guest(KvmVcpu v, KvmExit exit, string detail)
        => new(v.Index, exit.Reason, GuestFailureHint?.Invoke() is { } hint ? $"{detail}; {hint}" : detail, v.TryRegisters());

    /// <summary>Names a likely cause of a failed guest (e.g. the host overwrote the system slot), or null.</summary>
    public Func<string?>? GuestFailureHint { get; set; }

    /// <summary>Serve a ucall (<see cref="Ucall"/>); true when the guest said done.</summary>
    private bool HandleUcall(KvmVcpu v, KvmExit.Io io, GuestCallbacks cb, CancellationToken token)
    {
        if (!Ucall.TryDecode(io, out uint call, out string error)) throw Guest(v, io, error);
        switch (call)
        {
            case Ucall.Done:
                cb.OnDone?.Invoke(v.Index);
                return true;
            case Ucall.Sync:
                cb.OnSync?.Invoke(v.Index, v.GetRegs().rsi, token);
                return false;
            case Ucall.Assert:
            {
                var regs = v.TryRegisters();
                throw new GuestAssertException(v.Index, ReadGuestString(regs?.Rsi ?? 0), regs);
            }
            case Ucall.Print:
                var text = ReadGuestString(v.GetRegs().rsi);
                if (cb.OnPrint != null) cb.OnPrint(v.Index, text);
                else RunLog.WriteLine($"[vcpu{v.Index}] {text}"); // the SDK reports, the host decides where it goes
                return false;
            default: // Ucall.Yield: the exit itself was the point
                return false;
        }
    }

    /// <summary>A NUL-terminated UTF-8 string of at most 4 KiB at <paramref name="gpa"/> (a placeholder when outside guest memory).</summary>
    private string ReadGuestString(ulong gpa)
    {
        var bytes = new List<byte>();
        for (ulong i = 0; i < 4096; i++)
        {
            byte b;
            // Safe because HostPointer only answers for a byte inside a registered slot; slots cannot go away during a run.
            unsafe
            {
                var p = HostPointer(gpa + i, 1);
                if (p == null) return bytes.Count == 0 ? $"<message at gpa 0x{gpa:x} is outside guest memory>" : Encoding.UTF8.GetString(bytes.ToArray());
                b = *p;
            }
            if (b == 0) break;
            bytes.Add(b);
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }
}
