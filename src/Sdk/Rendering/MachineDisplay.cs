using System.Globalization;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Machine.Kvm;
using VirtLab.Sdk.Measure;

namespace VirtLab.Sdk.Rendering;

/// <summary>
/// How the machine model (<c>VirtLab.Sdk.Machine</c>) is shown: the adapter at the edge, so the model itself has no UI
/// dependency. The shell renders any value through <see cref="TryRender(object?, out IRenderable)"/> after <see cref="IDisplayable"/>; scripts
/// and plugins can call the <c>ToRenderable()</c> extensions directly (this namespace is a default script import).
/// A device that wants a richer view than its summary implements <see cref="IDisplayable"/> itself.
/// </summary>
public static class MachineDisplay
{
    /// <summary>The view of a machine-model value, or false when <paramref name="value"/> is not one.</summary>
    public static bool TryRender(object? value, out IRenderable renderable) => TryRender(value, full: false, out renderable);

    /// <summary>As <see cref="TryRender(object?, out IRenderable)"/>; with <paramref name="full"/> a value that
    /// summarises shows everything (a workload result's every pass).</summary>
    public static bool TryRender(object? value, bool full, out IRenderable renderable)
    {
        IRenderable? r = value switch
        {
            Vm vm => vm.ToRenderable(),
            Workload w => w.ToRenderable(),
            WorkloadResult w => w.ToRenderable(full),
            AddressSpace a => a.ToRenderable(),
            VmDevice d => d.ToRenderable(),
            KvmSystem s => s.ToRenderable(),
            KvmStats s => s.ToRenderable(),
            KvmStatsSnapshot s => s.ToRenderable(),
            KvmStatsDelta d => d.ToRenderable(),
            _ => null,
        };
        renderable = r ?? Text.Empty;
        return r is not null;
    }

    // ---- Machine -----------------------------------------------------------------------------------------------

    /// <summary>The VM's memslots and dirty-log mode, its devices under it; on KVM also the fd and the gva windows.</summary>
    public static IRenderable ToRenderable(this Vm vm)
    {
        if (vm.IsDisposed) return new Text($"{vm.Backend} VM, {vm.Vcpus} vCPU(s): disposed (its memslots and memory are gone)");
        var t = new Table { Title = new TableTitle(Markup.Escape($"{vm.Backend} VM, {vm.Vcpus} vCPU(s)")) };
        t.AddColumn("slot").AddColumn("gpa").AddColumn("size").AddColumn("backing").AddColumn("flags");
        foreach (var s in vm.Slots)
            t.AddRow(s.Id.ToString(), Markup.Escape($"[0x{s.Gpa:x}, 0x{s.EndGpa:x})"), s.Size.ToString(), s.Backing.Name(),
                s.LogDirtyPages ? "LOG_DIRTY_PAGES" : "");
        var dirty = vm.ManualProtect ? (vm.InitiallySet ? "manual protect, initially set" : "manual protect") : "legacy get";
        if (vm.DirtyRing is { } r) dirty = $"ring {r.Entries} entries/vCPU";
        t.Caption = new TableTitle(Markup.Escape($"dirty log: {dirty}; guest phys bits {vm.GuestPhysBits}"));
        IRenderable shown = WithDevices(t, vm.Devices);
        return vm is KvmVm kvm ? WithKvm(shown, kvm.Machine) : shown;
    }

    private static IRenderable WithDevices(IRenderable vmTable, IReadOnlyList<VmDevice> devices)
    {
        if (devices.Count == 0) return vmTable;
        var t = new Table { Title = new TableTitle("devices") };
        t.AddColumn("device").AddColumn("type").AddColumn("state");
        foreach (var d in devices) t.AddRow(Markup.Escape(d.Name), Markup.Escape(d.GetType().Name), Markup.Escape(d.Summary));
        return new Rows(vmTable, t);
    }

    private static IRenderable WithKvm(IRenderable vmView, KvmMachine m)
    {
        var grid = new Grid().AddColumn();
        grid.AddRow(vmView);
        grid.AddRow(new Text(
            $"KVM: VM fd {m.VmFd}, {m.VcpuCount} vCPU thread(s) per run, guest phys bits {m.GuestPhysBits}, " +
            $"{(m.Use1GPages ? "1 GiB" : "2 MiB")} guest pages"));
        // One window per line: a long line would wrap inside "[0x…, 0x…)".
        var windows = m.GuestMappings.Select(w => $"  gpa [0x{w.Gpa:x}, 0x{w.End:x}) at gva 0x{w.Gva:x}").ToList();
        if (windows.Count == 0) grid.AddRow(new Text("guest-virtual windows: (laid out at the first run)"));
        else
        {
            grid.AddRow(new Text("guest-virtual windows" + (m.GuestMappingsCurrent ? ":" : " (memslots changed since; laid out again at the next run):")));
            foreach (var w in windows) grid.AddRow(new Text(w));
        }
        return grid;
    }

    /// <summary>A device: its own view when it is <see cref="IDisplayable"/>, else its name, state and summary.</summary>
    public static IRenderable ToRenderable(this VmDevice d) => d is IDisplayable own
        ? own.ToRenderable()
        : new Text($"{d.Name}: {(d.IsAttached ? "attached" : "not attached")}{(d.Summary.Length > 0 ? ", " + d.Summary : "")}");

    /// <summary>A workload as a table in human units (sizes as "2 MiB", the write value in hex).</summary>
    public static IRenderable ToRenderable(this Workload w)
    {
        static string Bytes(long b) => b is > 0 and < 1024 ? $"{b} B" : new Measure.Size(b).ToString();
        var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape($"Workload {w.Name ?? ""}".TrimEnd()))
            .AddColumn("[bold]field[/]").AddColumn("[bold]value[/]");
        void Row(string k, string v) => t.AddRow(new Text(k), new Text(v));
        Row("range", w.RangeText);
        Row("stride", Bytes(w.Stride) + (w.Offset != 0 ? $", accesses at +{w.Offset} bytes" : ""));
        Row("accesses per stride", string.Join("; ", w.EffectiveAccesses.Select(a =>
            $"{a.Count} × {a.Op.ToString().ToLowerInvariant()} at +{(a.Offset == 0 ? "0" : Bytes(a.Offset))}" + (a.Count > 1 ? $" every {Bytes(a.Step)}" : ""))));
        Row("writes", !w.EffectiveAccesses.Any(a => a.Op == AccessOp.Auto) ? "as listed per access"
            : w.Roles == VcpuRoles.EvenWriteOddRead ? "even vCPUs write, odd vCPUs read" : $"{w.WritePercent}% of auto accesses (seed {w.Seed})");
        Row("order", $"{w.Order}; {(w.Sharing == VcpuSharing.Partition ? "each vCPU its own share" : "every vCPU the whole range")}");
        Row("passes", $"{w.Passes}{(w.SyncEachPass ? ", sync point after each" : ", back to back")}");
        Row("write value", $"0x{w.WriteValue:x16}");
        return t;
    }

    /// <summary>Up to this many passes a result's table has a column per pass; past it, per-vCPU statistics and a sparkline.</summary>
    public const int PassColumns = 10;

    /// <summary>A run's result: one row per vCPU with its counts and per-pass times (a column per pass up to
    /// <see cref="PassColumns"/>; past it, unless <paramref name="full"/>, min / median / max / total and a sparkline;
    /// with <paramref name="full"/>, a row per pass).</summary>
    public static IRenderable ToRenderable(this WorkloadResult r, bool full = false)
    {
        var t = new Table { Title = new TableTitle(Markup.Escape($"{r.Workload.Name ?? "workload"} on {r.Backend}: {r.Elapsed.TotalMilliseconds:0.###} ms")) };
        static string Ms(TimeSpan x) => x.TotalMilliseconds.ToString("0.###", CultureInfo.InvariantCulture);
        if (r.PassTimes.Count <= PassColumns)
        {
            t.AddColumn("vCPU").AddColumn("role").AddColumn("reads").AddColumn("writes");
            for (int p = 0; p < r.PassTimes.Count; p++) t.AddColumn($"pass {p} ms");
            foreach (var v in r.PerVcpu)
            {
                var cells = new List<string> { v.Vcpu.ToString(), v.Role.ToString(), v.Reads.ToString(), v.Writes.ToString() };
                cells.AddRange(v.PassTimes.Select(Ms));
                t.AddRow(cells.ToArray());
            }
            return t;
        }
        if (full)
        {
            // A row per pass: 2000 passes scroll, they do not squeeze into 2000 columns.
            t.AddColumn("pass").AddColumn("wall ms");
            foreach (var v in r.PerVcpu) t.AddColumn($"vCPU {v.Vcpu} ms");
            for (int p = 0; p < r.PassTimes.Count; p++)
                t.AddRow([p.ToString(CultureInfo.InvariantCulture), Ms(r.PassTimes[p]), .. r.PerVcpu.Select(v => p < v.PassTimes.Count ? Ms(v.PassTimes[p]) : "")]);
            return t;
        }
        t.AddColumn("vCPU").AddColumn("role").AddColumn("reads").AddColumn("writes").AddColumn("passes")
            .AddColumn("min ms").AddColumn("median ms").AddColumn("max ms").AddColumn("total ms").AddColumn("passes over time");
        foreach (var v in r.PerVcpu)
        {
            var sorted = v.PassTimes.Order().ToArray();
            var median = sorted.Length == 0 ? TimeSpan.Zero : sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
            t.AddRow(v.Vcpu.ToString(), v.Role.ToString(), v.Reads.ToString(), v.Writes.ToString(), v.PassTimes.Count.ToString(),
                sorted.Length == 0 ? "" : Ms(sorted[0]), Ms(median), sorted.Length == 0 ? "" : Ms(sorted[^1]), Ms(v.Total),
                PlotRequest.Sparkline(v.PassTimes.Select(x => x.TotalMilliseconds).ToArray(), 32));
        }
        t.Caption = new TableTitle($"{r.PassTimes.Count} passes: Show(result, full: true) or result.PassTimes for every one");
        return t;
    }

    /// <summary>An address space's mappings (the memslots of a guest-physical space, the IOVA mappings of an IOVA space).</summary>
    public static IRenderable ToRenderable(this AddressSpace space) => space switch
    {
        GuestPhysicalSpace g => GuestPhysical(g),
        IovaSpace i => Iova(i),
        IDisplayable own => own.ToRenderable(),
        _ => new Text(space.ToString() ?? space.Name),
    };

    private static IRenderable GuestPhysical(GuestPhysicalSpace g)
    {
        var t = new Table { Title = new TableTitle("guest-physical address space (memslots)") };
        t.AddColumn("gpa").AddColumn("size").AddColumn("slot").AddColumn("perm");
        foreach (var s in g.Vm.SlotsSnapshot)
            t.AddRow(Markup.Escape($"[0x{s.Gpa:x}, 0x{s.EndGpa:x})"), s.Size.ToString(), s.Id.ToString(), "RW");
        t.Caption = new TableTitle($"generation {g.Generation}, faults {g.Faults}");
        return t;
    }

    private static IRenderable Iova(IovaSpace i)
    {
        var maps = i.Mappings;
        var t = new Table { Title = new TableTitle(Markup.Escape($"{i.Name}: IOVA space over {i.Parent.Name}")) };
        t.AddColumn("iova").AddColumn("last").AddColumn("size").AddColumn(Markup.Escape($"→ {i.Parent.Name}")).AddColumn("perm");
        const int shown = 32;
        foreach (var m in maps.Take(shown))
            t.AddRow($"0x{m.Iova:x}", $"0x{m.Last:x}", new Measure.Size((long)Math.Min(m.Size, long.MaxValue)).ToString(), $"0x{m.Target:x}", IovaMapping.PermName(m.Perm));
        if (maps.Count > shown) t.AddRow($"… {maps.Count - shown} more", "", "", "", "");
        t.Caption = new TableTitle(Markup.Escape($"{maps.Count} mapping(s), range [0x{i.First:x}, 0x{i.Last:x}], generation {i.Generation}, faults {i.Faults}"));
        return t;
    }

    // ---- Machine.Kvm --------------------------------------------------------------------------------------------

    /// <summary>What `virtlab doctor` prints about KVM and the host.</summary>
    public static IRenderable ToRenderable(this KvmSystem k)
    {
        var t = new Table().Border(TableBorder.Rounded).Title("[bold]KVM[/]").AddColumn("item").AddColumn("value");
        t.AddRow("usable", k.Usable ? "[green]yes[/]" : $"[red]no[/]: {Markup.Escape(k.Reason)}");
        if (k.Usable)
        {
            t.AddRow("API version", k.ApiVersion.ToString());
            t.AddRow("vCPU mmap size", $"{k.VcpuMmapSize} bytes");
            foreach (var c in k.Capabilities) t.AddRow(Markup.Escape(c.Name) + $" ({c.Number})", c.Value.ToString());
        }
        foreach (var (mod, ps) in k.ModuleParameters)
            t.AddRow($"module {Markup.Escape(mod)}", Markup.Escape(string.Join("  ", ps.Select(p => $"{p.Key}={p.Value}"))));
        t.AddRow("THP", $"enabled={Markup.Escape(k.ThpEnabled)} defrag={Markup.Escape(k.ThpDefrag)}");
        foreach (var h in k.HugePages)
            t.AddRow($"hugetlb {PageSize(h.PageSize)}", $"total {h.Total}, free {h.Free}, reserved {h.Reserved}, surplus {h.Surplus}");
        t.AddRow("kernel", Markup.Escape(k.Kernel));
        t.AddRow("CPU", Markup.Escape($"{k.Cpu} × {k.LogicalCpus}, hardware virtualization: {k.HardwareVirtualization}"));
        return t;
    }

    private static string PageSize(long b) => b >= 1 << 30 ? $"{b >> 30} GiB" : b >= 1 << 20 ? $"{b >> 20} MiB" : $"{b >> 10} KiB";

    /// <summary>A stats fd, shown as its values now (a snapshot).</summary>
    public static IRenderable ToRenderable(this KvmStats s) => s.IsClosed
        ? new Text($"KVM stats {s.Id}: closed (its VM or vCPU was disposed)")
        : s.Snapshot().ToRenderable();

    /// <summary>Every statistic of the snapshot, one row each.</summary>
    public static IRenderable ToRenderable(this KvmStatsSnapshot s)
    {
        var t = new Table().Border(TableBorder.Rounded).Title($"[bold]{Markup.Escape(s.Id)}[/]").AddColumn("statistic").AddColumn(new TableColumn("value").RightAligned());
        foreach (var d in s.Descriptors) t.AddRow(Markup.Escape(d.Name), Format(s.Values[d.Name]));
        return t;
    }

    private static string Format(ulong[] v) => v.Length == 1 ? v[0].ToString("N0") : "[" + string.Join(" ", v) + "]";

    /// <summary>The counters that changed, with before, after and the signed change; "(no change)" when none did.</summary>
    public static IRenderable ToRenderable(this KvmStatsDelta d)
    {
        var t = new Table().Border(TableBorder.Rounded).Title($"[bold]{Markup.Escape(d.Id)}[/] Δ over {d.Elapsed.TotalMilliseconds:F1} ms")
            .AddColumn("statistic").AddColumn(new TableColumn("before").RightAligned()).AddColumn(new TableColumn("after").RightAligned())
            .AddColumn(new TableColumn("Δ").RightAligned());
        if (d.Changes.Count == 0) t.AddRow("[grey](no change)[/]", "", "", "");
        foreach (var c in d.Changes) t.AddRow(Markup.Escape(c.Name), c.Before.ToString("N0"), c.After.ToString("N0"), (c.Delta >= 0 ? "+" : "") + c.Delta.ToString("N0"));
        return t;
    }
}
