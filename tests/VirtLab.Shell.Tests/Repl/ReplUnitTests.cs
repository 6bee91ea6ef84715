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
        using var tmp = new TempDir(); // removed even when an assertion fails
        var path = Path.Combine(tmp.Path, ".virtlab", "history");
        new History(path).Append("var a = 1;");
        new History(path).Append("for (;;)\n  break;");
        Assert.Equal(["var a = 1;", "for (;;)\n  break;"], new History(path).Entries);
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
    public void Completion_replaces_the_identifier_the_host_names_and_Tab_cycles_without_asking_again()
    {
        var asked = new List<(string Code, int Position)>();
        var completion = new HostCompletion((code, pos) =>
        {
            asked.Add((code, pos));
            // As the host answers "vm.sl": case-insensitive matches, replacing the two letters before the caret.
            return new Reply { Completions = [new() { Text = "SlotCount" }, new() { Text = "Slots" }], ReplaceStart = pos - 2, ReplaceLength = 2 };
        }) { PrecedingText = "var a = 1;\n" };

        var first = completion.Next("x = vm.sl", 9);
        Assert.Equal(new HostCompletion.Edit(7, 2, "SlotCount"), first);
        Assert.Equal([("var a = 1;\nx = vm.sl", 20)], asked);

        // Tab again on the line as the first Tab left it: the next candidate over the one just put in, then around.
        Assert.Equal(new HostCompletion.Edit(7, 9, "Slots"), completion.Next("x = vm.SlotCount", 16));
        Assert.Equal(new HostCompletion.Edit(7, 5, "SlotCount"), completion.Next("x = vm.Slots", 12));
        Assert.Equal(new HostCompletion.Edit(7, 9, "Slots"), completion.Next("x = vm.SlotCount", 16, forward: false));
        Assert.Single(asked);

        // An edited line asks the host again.
        completion.Next("x = vm.Slots + vm.sl", 20);
        Assert.Equal(2, asked.Count);
    }

    [Fact]
    public void Completion_rejects_a_range_outside_the_line_being_edited()
    {
        var completion = new HostCompletion((_, pos) => new Reply { Completions = [new() { Text = "Value" }], ReplaceStart = pos - 20, ReplaceLength = 1 })
            { PrecedingText = "var v = 1;\n" };
        Assert.Null(completion.Next("v.Va", 4));
    }

    [Fact]
    public void Meta_commands_complete_at_the_start_of_a_submission()
    {
        var completion = new HostCompletion((_, _) => throw new InvalidOperationException("the host is not asked about meta-commands"));
        Assert.Equal(new HostCompletion.Edit(0, 3, "#reload"), completion.Next("#re", 3));
        Assert.Equal(new HostCompletion.Edit(0, 7, "#reset"), completion.Next("#reload", 7));
        Assert.Null(completion.Next("#load fi", 8)); // an argument: nothing to complete
        completion.PrecedingText = "var s = \"\n";
        Assert.Throws<InvalidOperationException>(() => completion.Next("#re", 3)); // not the start of a submission
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
