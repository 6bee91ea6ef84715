using Spectre.Console.Rendering;

namespace VirtLab.Sdk;

/// <summary>A value that knows how to show itself richly (a table, a tree) in the REPL and in recipe output.</summary>
public interface IDisplayable
{
    /// <summary>The value as a Spectre.Console renderable (what the REPL and <c>Show</c> print).</summary>
    IRenderable ToRenderable();
}
