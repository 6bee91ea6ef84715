namespace VirtLab.Sdk.Machine;

/// <summary>
/// A device model attached to a VM (<c>var b = vm.Attach(Balloon.Device());</c>). Plugins derive from it. The VM calls
/// <see cref="OnAttach"/> once, lists the device in <see cref="Vm.Devices"/> and its table, and disposes it first when
/// the VM is disposed — before guest memory is unmapped — so a device stops its threads while memory is still there.
/// </summary>
public abstract class VmDevice : IDisposable
{
    Vm? _vm;
    int _disposed;

    /// <summary>A device named <paramref name="name"/>, not yet attached.</summary>
    protected VmDevice(string name)
    {
        ArgumentException.ThrowIfNullOrWhiteSpace(name);
        Name = name;
    }

    /// <summary>Shown in the VM's table and in messages ("virtio-balloon", "vdpa-net0").</summary>
    public string Name { get; }

    /// <summary>The VM this device is attached to, or null before <see cref="Vm.Attach{T}"/>.</summary>
    public Vm? Vm => _vm;

    /// <summary>Whether the device is attached to a VM.</summary>
    public bool IsAttached => _vm is not null;

    /// <summary>Whether <see cref="Dispose()"/> ran.</summary>
    public bool IsDisposed => Volatile.Read(ref _disposed) != 0;

    /// <summary>The attached VM; throws a clear error when the device is not attached or was disposed.</summary>
    protected Vm AttachedVm
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsDisposed, this);
            return _vm ?? throw new InvalidOperationException($"device {Name} is not attached to a VM; use vm.Attach(device) first");
        }
    }

    /// <summary>
    /// Called once by <see cref="Vm.Attach{T}"/>, before the device is listed. The device sets itself up against
    /// <paramref name="vm"/> here (address spaces, queues, threads). An exception leaves the device unattached.
    /// </summary>
    protected abstract void OnAttach(Vm vm);

    /// <summary>One line for the VM's device table (state, queue counts, …).</summary>
    public virtual string Summary => IsDisposed ? "disposed" : "";

    /// <summary>Stops the device's threads and releases its resources. Called by <see cref="Dispose()"/> exactly once.</summary>
    protected virtual void Dispose(bool disposing) { }

    /// <inheritdoc/>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        Dispose(true);
        GC.SuppressFinalize(this);
    }

    /// <inheritdoc/>

    public override string ToString() => Summary.Length > 0 ? $"{Name} ({Summary})" : Name;

    internal void Bind(Vm target)
    {
        if (IsDisposed) throw new ObjectDisposedException(Name, $"device {Name} was disposed; create a new one");
        if (Interlocked.CompareExchange(ref _vm, target, null) is { } other)
            throw new InvalidOperationException(ReferenceEquals(other, target)
                ? $"device {Name} is already attached to this VM"
                : $"device {Name} is already attached to another VM; a device belongs to one VM");
        try
        {
            OnAttach(target);
        }
        catch
        {
            Volatile.Write(ref _vm, null);
            throw;
        }
    }
}

/// <summary>The devices attached to one VM, in attach order (Vm's part of <see cref="VmDevice"/>).</summary>
internal sealed class VmDeviceList
{
    readonly object _gate = new();
    VmDevice[] _devices = [];
    bool _closed;

    public IReadOnlyList<VmDevice> Snapshot => Volatile.Read(ref _devices);

    public T Attach<T>(Vm vm, T device) where T : VmDevice
    {
        ArgumentNullException.ThrowIfNull(device);
        lock (_gate)
        {
            vm.ThrowIfDisposed();
            if (_closed) throw new ObjectDisposedException(null, "this VM is being disposed; it takes no new devices");
            device.Bind(vm);
            Volatile.Write(ref _devices, [.. _devices, device]);
        }
        return device;
    }

    /// <summary>Disposes every device, last attached first; returns what failed (all are disposed regardless).</summary>
    public Exception? DisposeAll()
    {
        VmDevice[] all;
        lock (_gate)
        {
            _closed = true;
            all = _devices;
        }
        List<Exception>? errors = null;
        for (int i = all.Length - 1; i >= 0; i--)
        {
            try { all[i].Dispose(); }
            catch (Exception e) { (errors ??= []).Add(e); }
        }
        return errors is null ? null : new AggregateException("disposing the VM's devices failed", errors);
    }
}
