using Spectre.Console.Rendering;

namespace VirtLab.Sdk;

/// <summary>A value that knows how to show itself richly (a table, a tree) in the REPL and in recipe output.</summary>
public interface IDisplayable
{
    /// <summary>The value as a Spectre.Console renderable (what the REPL and <c>Show</c> print).</summary>
    IRenderable ToRenderable();

    /// <summary>With <paramref name="full"/>, everything, where <see cref="ToRenderable()"/> summarises (a workload's
    /// every pass instead of per-vCPU statistics). <c>Show(value, full: true)</c> calls it.</summary>
    IRenderable ToRenderable(bool full) => ToRenderable();
}
