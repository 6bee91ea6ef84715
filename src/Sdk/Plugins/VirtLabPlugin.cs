namespace VirtLab.Sdk.Plugins;

/// <summary>
/// Entry point of a plugin. A plugin assembly holds exactly one public, non-abstract subclass of
/// <see cref="VirtLabPlugin{TGlobal}"/> with a public parameterless constructor. The shell creates it in the
/// plugin's own load context and exposes <see cref="CreateGlobal"/>'s result to scripts as <see cref="GlobalName"/>.
/// Name and version come from the assembly (AssemblyName, AssemblyInformationalVersion); the SDK major it
/// targets is the major of the VirtLab.Sdk it references.
/// </summary>
public abstract class VirtLabPlugin
{
    /// <summary>The identifier scripts use, e.g. <c>Mmu</c>. Must be a valid C# identifier, unique among loaded plugins.</summary>
    public abstract string GlobalName { get; }

    /// <summary>One line for <c>virtlab plugins</c> and <c>#plugins</c>.</summary>
    public abstract string Description { get; }

    /// <summary>The static type scripts see for the global (its public members are what completion offers).</summary>
    public abstract Type GlobalType { get; }

    /// <summary>Creates the global once per evaluation host; may throw (reported as a load error).</summary>
    public abstract object CreateGlobal(PluginContext context);

    /// <summary>
    /// Runs the plugin's hot paths once before a recipe starts, so that a recipe's first timed call of them costs what
    /// the later ones do (no JIT, no first-call fixups). Called once per process after <see cref="CreateGlobal"/>, on a
    /// worker thread, after the SDK's own warm-up (<c>VirtLab.Sdk.Machine.WarmUp</c>). Work on scratch objects (e.g. a
    /// <c>Vm.Create(2.MiB())</c> of your own), never on the global's state; keep it to milliseconds. An exception is
    /// reported in the run record's preparation and does not stop the recipe. The default does nothing.
    /// </summary>
    public virtual void WarmUp() { }
}

/// <summary>Typed convenience base: <c>class MmuPlugin : VirtLabPlugin&lt;MmuApi&gt;</c>.</summary>
public abstract class VirtLabPlugin<TGlobal> : VirtLabPlugin where TGlobal : class
{
    /// <inheritdoc/>
    public sealed override Type GlobalType => typeof(TGlobal);
    /// <inheritdoc/>
    public sealed override object CreateGlobal(PluginContext context) => Create(context);
    /// <summary>Creates the global scripts see (once per process); may throw, which the shell reports as a load error.</summary>
    protected abstract TGlobal Create(PluginContext context);
}

/// <summary>What the shell hands a plugin when it creates its global.</summary>
public sealed class PluginContext
{
    /// <summary>What the shell passes: the plugin's folder and where to log.</summary>
    public PluginContext(string pluginDirectory, TextWriter log)
    {
        PluginDirectory = pluginDirectory;
        Log = log;
    }

    /// <summary>The folder the plugin was loaded from.</summary>
    public string PluginDirectory { get; }

    /// <summary>Where the plugin writes diagnostics (the shell's stderr).</summary>
    public TextWriter Log { get; }
}
