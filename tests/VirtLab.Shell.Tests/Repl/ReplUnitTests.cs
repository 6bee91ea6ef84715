using Xunit;
using VirtLab.Shell.Repl;

namespace VirtLab.Shell.Tests.Repl;

public sealed class ReplUnitTests
{
    [Theory]
    [InlineData("var x = 1;")]
    [InlineData("int F(int a)\n    => a * 2;")]
    [InlineData("var path = @\"C:\\new\\n\";\nConsole.WriteLine(path);")]
    public void History_escaping_round_trips_one_entry_per_line(string entry)
    {
        var escaped = History.Escape(entry);
        Assert.DoesNotContain('\n', escaped);
        Assert.Equal(entry, History.Unescape(escaped));
    }

    [Fact]
    public void History_survives_a_restart()
    {
        var path = Path.Combine(Directory.CreateTempSubdirectory("virtlab-history-").FullName, ".virtlab", "history");
        new History(path).Append("var a = 1;");
        new History(path).Append("for (;;)\n  break;");
        Assert.Equal(["var a = 1;", "for (;;)\n  break;"], new History(path).Entries);
        Directory.Delete(Path.GetDirectoryName(Path.GetDirectoryName(path))!, recursive: true);
    }

    [Theory]
    [InlineData("vm", "// vm   (shown in the REPL)")]
    [InlineData("b.Inflate(768)", "b.Inflate(768);")]
    [InlineData("x = 3", "x = 3;")]
    [InlineData("var y = 2;", "var y = 2;")]
    [InlineData("var y = 2;\ny * 3", "var y = 2;\n// y * 3   (shown in the REPL)")]
    public void Save_turns_shown_values_into_statements_or_comments(string submission, string expected) =>
        Assert.Equal(expected, MetaCommands.AsStatement(submission));

    [Fact]
    public void Completion_items_replace_only_the_identifier_inside_RadLines_word()
    {
        string? askedCode = null; var askedAt = -1;
        var completion = new HostCompletion((code, pos) =>
        {
            (askedCode, askedAt) = (code, pos);
            return new Reply { Completions = [new() { Text = "Slot" }, new() { Text = "Slots" }], ReplaceStart = pos - 2, ReplaceLength = 2 };
        }) { PrecedingText = "var a = 1;\n" };
        var items = completion.GetCompletions("x = ", "vm.Sl", "").ToList();
        Assert.Equal("var a = 1;\nx = vm.Sl", askedCode);
        Assert.Equal(askedCode!.Length, askedAt);
        Assert.Equal(["vm.Slot", "vm.Slots"], items);
    }

    [Fact]
    public void Meta_commands_complete_at_the_start_of_a_submission()
    {
        var completion = new HostCompletion((_, _) => null);
        Assert.Equal(["#reload", "#reset"], completion.GetCompletions("", "#re", "").ToList());
    }

    [Fact]
    public void Highlighting_is_lexical_a_keyword_in_a_string_is_a_string()
    {
        var h = new CSharpHighlighter();
        h.SetGlobals(["Mmu"]);
        h.BeginLine("var s = \"if\"; // while");
        var var = h.Highlight("var");
        var s = h.Highlight("s");
        h.Highlight("="); h.Highlight("\"");
        var ifInString = h.Highlight("if");
        h.Highlight("\""); h.Highlight(";"); h.Highlight("/"); h.Highlight("/");
        var whileInComment = h.Highlight("while");
        Assert.NotNull(var);
        Assert.Null(s);
        Assert.NotEqual(var, ifInString);
        Assert.NotEqual(var, whileInComment);

        h.BeginLine("Mmu.Run()");
        Assert.NotNull(h.Highlight("Mmu"));
    }

    [Theory]
    [InlineData("var x = 1;", true)]
    [InlineData("int F(int a)", false)]
    [InlineData("var s = new[] {", false)]
    [InlineData("var s = \"unterminated", false)] // Roslyn waits for more; two empty lines end it in the REPL
    public void Enter_continues_only_an_incomplete_submission(string text, bool complete) =>
        Assert.Equal(complete, MetaCommands.IsCompleteSubmission(text));
}
