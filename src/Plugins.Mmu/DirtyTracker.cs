using System.Text;
using Spectre.Console;
using Spectre.Console.Rendering;
using VirtLab.Sdk;
using VirtLab.Sdk.Machine;
using Size = VirtLab.Sdk.Measure.Size;

namespace VirtLab.Plugins.Mmu;

/// <summary>
/// Interactive dirty tracking over whatever collection mode the VM was created with: <see cref="Collect"/> returns the
/// pages dirtied since the previous call (legacy GET, which re-protects; manual protect GET + CLEAR of exactly the
/// reported pages; or the dirty rings harvested and reset). Turning tracking on sets KVM_MEM_LOG_DIRTY_PAGES on the
/// tracked slots; with KVM_DIRTY_LOG_INITIALLY_SET the first collection reports every page, as KVM does.
/// </summary>
public sealed class DirtyTracker : IDisplayable
{
    readonly Vm vm;
    readonly MemSlot[] slots;
    long collections;
    DirtySet? last;

    internal DirtyTracker(Vm vm, IEnumerable<int>? slotIds)
    {
        this.vm = vm ?? throw new ArgumentNullException(nameof(vm));
        slots = (slotIds is null ? vm.Slots.Where(s => !s.IsSystem) : slotIds.Select(vm.Slot)).ToArray();
        if (slots.Length == 0) throw new ArgumentException("there is no memslot to track: the VM has only the system slot", nameof(slotIds));
        if (slots.FirstOrDefault(s => s.IsSystem) is { } sys)
            throw new ArgumentException($"{sys} is the system slot (the backend's code, stacks and page tables); track test slots", nameof(slotIds));
        foreach (var s in slots) if (!s.LogDirtyPages) s.LogDirtyPages = true;
    }

    /// <summary>How pages are collected: legacy get, manual protect (initially set) or ring.</summary>
    public string Mode => vm.DirtyRing is { } r ? $"dirty ring ({r.Entries} entries per vCPU)"
        : vm.ManualProtect ? (vm.InitiallySet ? "manual protect, initially set" : "manual protect") : "legacy get";

    public IReadOnlyList<MemSlot> Slots => slots;

    /// <summary>Pages dirtied since the last call (since tracking started, the first time).</summary>
    public DirtySet Collect()
    {
        var result = new Dictionary<int, DirtyBitmap>();
        if (vm.DirtyRing is { } ring)
        {
            var h = ring.HarvestBitmaps();
            foreach (var s in slots) result[s.Id] = h.TryGetValue(s.Id, out var b) ? b : new DirtyBitmap(s.Pages);
            ring.Reset();
        }
        else
        {
            foreach (var s in slots)
            {
                var b = s.GetDirtyLog();
                if (vm.ManualProtect && b.Any) s.ClearDirtyLog(b); // re-protect exactly what we report
                result[s.Id] = b;
            }
        }
        collections++;
        return last = new DirtySet(slots.Select(s => new SlotDirty(s.Id, s.Gpa, s.Pages, result[s.Id])).ToArray());
    }

    /// <summary>Stops tracking: clears KVM_MEM_LOG_DIRTY_PAGES on the tracked slots.</summary>
    public void Stop()
    {
        foreach (var s in slots) if (!vm.IsDisposed && s.LogDirtyPages) s.LogDirtyPages = false;
    }

    public IRenderable ToRenderable() => last?.ToRenderable() ?? new Text(ToString());

    public override string ToString() => $"dirty tracker over {string.Join(", ", slots.Select(s => $"slot {s.Id}"))} ({Mode}), {collections} collection(s); call Collect()";
}

/// <summary>One slot's dirty pages from a collection.</summary>
public sealed record SlotDirty(int Slot, ulong Gpa, long Pages, DirtyBitmap Bitmap)
{
    public long DirtyPages => Bitmap.Count;
    public long Runs => Bitmap.Runs.Count();
}

/// <summary>The pages dirtied between two collections: a summary (pages, runs, MiB, per slot) and a heatmap of where they lie.</summary>
public sealed class DirtySet : IDisplayable
{
    internal DirtySet(IReadOnlyList<SlotDirty> slots) => Slots = slots;

    public IReadOnlyList<SlotDirty> Slots { get; }
    public long Pages => Slots.Sum(s => s.DirtyPages);
    public long Runs => Slots.Sum(s => s.Runs);
    public Size Bytes => new(Pages * 4096);

    public DirtyBitmap this[int slot] => Slots.First(s => s.Slot == slot).Bitmap;

    /// <summary>The summary table.</summary>
    public IRenderable Summary()
    {
        var t = new Table().Border(TableBorder.Rounded).Title(Markup.Escape($"dirty: {Pages:N0} pages in {Runs:N0} runs, {Bytes.Bytes / 1048576.0:0.##} MiB"));
        t.AddColumn("slot").AddColumn("gpa").AddColumn(new TableColumn("dirty pages").RightAligned()).AddColumn(new TableColumn("runs").RightAligned())
            .AddColumn(new TableColumn("MiB").RightAligned()).AddColumn(new TableColumn("of slot").RightAligned());
        foreach (var s in Slots)
            t.AddRow(s.Slot.ToString(), $"0x{s.Gpa:x}", s.DirtyPages.ToString("N0"), s.Runs.ToString("N0"),
                (s.DirtyPages * 4096 / 1048576.0).ToString("0.##"), s.Pages == 0 ? "" : (100.0 * s.DirtyPages / s.Pages).ToString("0.#") + " %");
        return t;
    }

    const string Shades = " ·░▒▓█";

    /// <summary>
    /// Where in each slot the dirty pages lie: the slot cut into <paramref name="columns"/> × <paramref name="rows"/> cells in
    /// address order (left to right, top to bottom); each cell's shade is the share of its pages that are dirty
    /// (blank none, · under 20 %, ░ ▒ ▓ in between, █ all).
    /// </summary>
    public string Heatmap(int columns = 64, int rows = 8)
    {
        if (columns < 1 || rows < 1) throw new ArgumentOutOfRangeException(nameof(columns), $"the heatmap needs at least 1×1 cells; got {columns}×{rows}");
        var sb = new StringBuilder();
        foreach (var s in Slots)
        {
            long cells = Math.Min((long)columns * rows, Math.Max(1, s.Pages));
            int r = (int)Math.Min(rows, (cells + columns - 1) / columns);
            sb.AppendLine($"slot {s.Slot} [0x{s.Gpa:x}, 0x{s.Gpa + (ulong)s.Pages * 4096:x}): {s.DirtyPages:N0} of {s.Pages:N0} pages dirty, " +
                          $"{new Size(Math.Max(4096, s.Pages * 4096 / cells))} per cell");
            for (int y = 0; y < r; y++)
            {
                sb.Append("  |");
                for (int x = 0; x < columns; x++)
                {
                    long cell = (long)y * columns + x;
                    if (cell >= cells) { sb.Append(' '); continue; }
                    long first = s.Pages * cell / cells, end = s.Pages * (cell + 1) / cells;
                    long dirty = s.Bitmap.CountRange(first, end - first);
                    sb.Append(Shade(dirty, end - first));
                }
                sb.AppendLine("|");
            }
        }
        return sb.ToString().TrimEnd();
    }

    static char Shade(long dirty, long pages)
    {
        if (dirty == 0 || pages == 0) return Shades[0];
        if (dirty == pages) return Shades[^1];
        double f = (double)dirty / pages;
        return Shades[1 + Math.Min(3, (int)(f * 5))];
    }

    public IRenderable ToRenderable() => new Rows(Summary(), new Text(Heatmap()));

    public override string ToString() => $"{Pages:N0} dirty pages in {Runs:N0} runs ({Bytes.Bytes / 1048576.0:0.##} MiB) over {Slots.Count} slot(s)";
}
