using System.Xml.Linq;
using VirtLab.Sdk.Machine;
using VirtLab.Sdk.Measure;
using VirtLab.Shell.Rendering;
using Xunit;

namespace VirtLab.Shell.Tests;

/// <summary>ScottPlot renders every kind of request to real PNG and SVG files, headless.</summary>
public sealed class PlotRenderingTests
{
    private static readonly byte[] PngMagic = [0x89, (byte)'P', (byte)'N', (byte)'G', 0x0d, 0x0a, 0x1a, 0x0a];

    public static IEnumerable<object[]> Requests()
    {
        yield return [PlotRequest.Line("line", Enumerable.Range(0, 50).Select(i => Math.Sin(i / 5.0)))];
        yield return [PlotRequest.Bars("bars", [("get", 3.0), ("clear", 5.0), ("harvest", 1.0)], "µs")];
        var bm = new DirtyBitmap(4096);
        bm.SetRange(100, 900);
        yield return [PlotRequest.Heatmap("heatmap", [bm, new DirtyBitmap(4096)])];
        yield return [new PlotRequest { Title = "grouped with error bars", Kind = PlotKind.Bar, Categories = ["a", "b"],
            Series = [new PlotSeries("A", [0, 1], [1, 1], [0.1, 0.2]), new PlotSeries("B", [0, 1], [1.5, 0.8], [0.05, 0.1])] }];
    }

    [Theory]
    [MemberData(nameof(Requests))]
    public void Png_and_svg_are_valid_files_of_real_size(PlotRequest request)
    {
        using var tmp = new TempDir();
        var png = Path.Combine(tmp.Path, "p.png");
        var svg = Path.Combine(tmp.Path, "sub", "p.svg");
        PlotRenderer.Save(request, png);
        PlotRenderer.Save(request, svg);
        var bytes = File.ReadAllBytes(png);
        Assert.Equal(PngMagic, bytes[..8]);
        Assert.True(bytes.Length > 5_000, $"PNG of {bytes.Length} bytes");
        // IHDR: width and height, big-endian, at bytes 16 and 20.
        Assert.Equal(PlotRenderer.Width, (bytes[16] << 24) | (bytes[17] << 16) | (bytes[18] << 8) | bytes[19]);
        var doc = XDocument.Load(svg);
        Assert.Equal("svg", doc.Root!.Name.LocalName);
        Assert.True(new FileInfo(svg).Length > 5_000);
        Assert.Contains(request.Title, File.ReadAllText(svg)); // the title is drawn as text
    }

    [Fact]
    public void Unknown_extension_is_refused()
    {
        var e = Assert.Throws<ArgumentException>(() => PlotRenderer.Save(PlotRequest.Line("x", [1, 2]), "/tmp/x.jpg"));
        Assert.Contains("must be .png or .svg", e.Message);
        Assert.Contains("'.jpg'", e.Message);
    }

    [Fact]
    public void A_run_plots_stages_then_series_then_the_recipes_own()
    {
        var ctx = new RecipeContext { Log = null };
        var g = new RecipeGlobals(ctx);
        g.Stage("a", () => { });
        g.Result("iterations", new[] { 1.0, 2.0, 3.0 });
        g.Result("scalar", 4);
        g.Plot("mine", new[] { 9, 8 });
        var plots = PlotRenderer.ForRun(ctx);
        Assert.Equal(["stage times", "iterations", "mine"], plots.Select(p => p.Title));
        Assert.Equal([1.0, 2, 3], plots[1].Series[0].Y);
    }
}
