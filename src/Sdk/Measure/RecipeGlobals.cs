using System.ComponentModel;

namespace VirtLab.Sdk.Measure;

/// <summary>
/// The globals of every recipe and REPL submission: scripts call these members unqualified
/// (<c>var mem = Arg("memory", 8.GiB(), test: 64.MiB());</c>, <c>Stage("populate", () => ...)</c>, <c>Expect(ok, "...")</c>).
/// All state lives in <see cref="Context"/>, which the shell reads after the run (and the REPL keeps across submissions).
/// </summary>
public partial class RecipeGlobals
{
    /// <summary>Globals over <paramref name="context"/>; <paramref name="plugins"/> are the plugin globals by name.</summary>
    public RecipeGlobals(RecipeContext context, IReadOnlyDictionary<string, object>? plugins = null)
    {
        Context = context ?? throw new ArgumentNullException(nameof(context));
        __Plugins = plugins ?? new Dictionary<string, object>();
    }

    /// <summary>The run state: stages, expectations, results, arguments.</summary>
    public RecipeContext Context { get; }

    /// <summary>Plugin globals by name; the shell's generated preamble turns each into a typed variable (<c>var Mmu = (MmuApi)__Plugins["Mmu"];</c>).</summary>
    [EditorBrowsable(EditorBrowsableState.Never)]
    public IReadOnlyDictionary<string, object> __Plugins { get; }

    /// <summary>The recipe's arguments (after <c>--</c>), raw. Prefer <see cref="Arg{T}(string, T)"/> for typed access.</summary>
    public RecipeArgs Args => Context.Args;

    /// <summary>True under <c>virtlab test</c>: use small sizes.</summary>
    public bool TestMode => Context.TestMode;

    /// <summary>Cancelled when the user presses Ctrl+C; pass it to long loops and waits.</summary>
    public CancellationToken Cancellation => Context.Cancellation;

    /// <summary>The stage table of this run; evaluate <c>Stages</c> in the REPL to see it.</summary>
    public StageSet Stages => Context.Stages;

    // ---- arguments ----

    /// <summary>
    /// <c>--name VALUE</c> parsed as <typeparamref name="T"/> (Size "512M", int, long, double, bool — a bare flag is true —,
    /// string, an enum by name — "anonymous_thp" works —, TimeSpan "500ms"), or <paramref name="default"/> when absent.
    /// </summary>
    /// <exception cref="RecipeArgumentException">The value does not parse; the message names the option, the text and what is allowed.</exception>
    public T Arg<T>(string name, T @default) => Context.Arg(name, @default, @default, hasTestDefault: false);

    /// <summary>As <see cref="Arg{T}(string, T)"/>, but <paramref name="test"/> is the default in test mode: <c>Arg("memory", 8.GiB(), test: 64.MiB())</c>.</summary>
    public T Arg<T>(string name, T @default, T test) => Context.Arg(name, @default, test, hasTestDefault: true);

    // ---- stages ----

    /// <summary>Times <paramref name="body"/> as stage <paramref name="name"/>; stages started inside nest under it.</summary>
    public void Stage(string name, Action body) => Context.Stages.Time(name, body);

    /// <summary>Times <paramref name="body"/> as stage <paramref name="name"/> and returns its value.</summary>
    public T Stage<T>(string name, Func<T> body) => Context.Stages.Time(name, body);

    /// <summary>Times the task <paramref name="body"/> returns as stage <paramref name="name"/>.</summary>
    public Task StageAsync(string name, Func<Task> body) => Context.Stages.TimeAsync(name, body);

    /// <summary>Times the task <paramref name="body"/> returns as stage <paramref name="name"/> and returns its value.</summary>
    public Task<T> StageAsync<T>(string name, Func<Task<T>> body) => Context.Stages.TimeAsync(name, body);

    /// <summary>Starts a stage that ends when disposed: <c>using var s = Stage("populate"); ... s.Count("pages", n);</c></summary>
    public StageTimer Stage(string name) => Context.Stages.Start(name);

    /// <summary>Adds to a counter of the innermost open stage: <c>Stage("touch", () => { ...; Count("pages", n); })</c>.</summary>
    public void Count(string counter, long n = 1) => Context.Stages.Count(counter, n);

    // ---- expectations, results, requirements ----

    /// <summary>Records an expectation. A failed one is reported at once and makes the run fail (exit 1) at the end; the recipe goes on.</summary>
    public bool Expect(bool condition, string what) => Context.Expect(condition, what);

    /// <summary>Records a result for the run record (replacing an earlier one of the same name) and returns the value.</summary>
    public T Result<T>(string name, T value)
    {
        Context.Result(name, value);
        return value;
    }

    /// <summary>Stops the recipe as skipped (exit 4) when <paramref name="condition"/> is false.</summary>
    /// <exception cref="RequirementMissingException"/>
    public void Require(bool condition, string reason)
    {
        if (!condition) throw new RequirementMissingException(reason);
    }

    /// <summary>Requires a usable KVM backend (<c>/dev/kvm</c> opens and answers; not disabled by <c>VIRTLAB_DISABLE_KVM</c>).</summary>
    /// <exception cref="RequirementMissingException"/>
    public void RequireKvm()
    {
        if (!VirtLab.Sdk.Machine.Vm.IsKvmUsable(out var why)) throw new RequirementMissingException("needs /dev/kvm: " + why);
    }

    // ---- output ----

    /// <summary>Shows a value the way the REPL does (tables for <see cref="IDisplayable"/> values) and returns it.</summary>
    public T Show<T>(T value)
    {
        Context.Show(value);
        return value;
    }

    /// <summary>As <see cref="Show{T}(T)"/>; with <paramref name="full"/> a value that summarises shows everything
    /// (<see cref="IDisplayable.ToRenderable(bool)"/>, a workload result's every pass).</summary>
    public T Show<T>(T value, bool full)
    {
        object shown = !full ? value! : value is IDisplayable d ? d.ToRenderable(full: true)
            : Rendering.MachineDisplay.TryRender(value, full: true, out var r) ? r : value!;
        Context.Show(shown);
        return value;
    }
}
