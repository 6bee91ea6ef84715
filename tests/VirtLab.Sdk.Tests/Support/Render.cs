using Spectre.Console;
using Spectre.Console.Rendering;

namespace VirtLab.Sdk.Tests;

static class Render
{
    /// <summary>Plain text of renderables as a 200-column terminal without colour would show them.</summary>
    public static string Text(params IRenderable[] items)
    {
        var text = new StringWriter();
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(text), Ansi = AnsiSupport.No, ColorSystem = ColorSystemSupport.NoColors,
        });
        console.Profile.Width = 200;
        foreach (var r in items) console.Write(r);
        return text.ToString();
    }
}
