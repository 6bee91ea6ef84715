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
    public void History_keeps_no_consecutive_duplicates_in_the_file_or_when_loading()
    {
        var dir = Directory.CreateTempSubdirectory("virtlab-history-").FullName;
        try
        {
            var path = Path.Combine(dir, "history");
            File.WriteAllText(path, "x\nx\ny\n");          // an older file may have repeats
            var history = new History(path);
            Assert.Equal(["x", "y"], history.Entries);
            history.Append("y");                              // the last entry again: not written
            history.Append("z");
            history.Append("z");
            history.Append("y");                              // not consecutive: kept
            Assert.Equal(["x", "x", "y", "z", "y"], File.ReadAllLines(path));
            Assert.Equal(["x", "y", "z", "y"], new History(path).Entries);
        }
        finally { Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void Meta_commands_complete_at_the_start_of_a_submission_without_asking_the_host()
    {
        var assist = new HostAssist(_ => throw new InvalidOperationException("the host is not asked about meta-commands"));
        var re = assist.Complete("#re", 3)!;
        Assert.Equal((0, 3), (re.Start, re.Length));
        Assert.Equal(["#reload", "#reset"], re.Items.Select(i => i.Text));
        Assert.Empty(assist.Complete("#load fi", 8)!.Items); // an argument: nothing to complete
        Assert.Throws<InvalidOperationException>(() => assist.Complete("var s = 1;\n#re", 14)); // not the start of a submission
    }

    [Fact]
    public void A_host_range_outside_the_text_completes_nothing_and_no_answer_means_not_ready()
    {
        var outside = new HostAssist(r => new Reply { Completions = [new() { Text = "Value" }], ReplaceStart = r.Position, ReplaceLength = 5 });
        Assert.Empty(outside.Complete("v.Va", 4)!.Items);
        Assert.Null(new HostAssist(_ => null).Complete("v.Va", 4));
    }

    [Fact]
    public void Highlighting_is_lexical_a_keyword_in_a_string_is_a_string_and_type_names_are_types()
    {
        var h = new CSharpHighlighter();
        h.SetGlobals(["Mmu"]);
        h.SetTypes(["Vm", "Workload"]);
        var text = "var s = \"if\"; // while";
        var kinds = h.Classify(text);
        Assert.Equal(CSharpHighlighter.Kind.Keyword, kinds[0]);
        Assert.Equal(CSharpHighlighter.Kind.None, kinds[text.IndexOf('s')]);
        Assert.Equal(CSharpHighlighter.Kind.String, kinds[text.IndexOf("if", StringComparison.Ordinal)]);
        Assert.Equal(CSharpHighlighter.Kind.Comment, kinds[text.IndexOf("while", StringComparison.Ordinal)]);

        var call = "Mmu.Run(Vm.Create(), Workload.Write())";
        kinds = h.Classify(call);
        Assert.Equal(CSharpHighlighter.Kind.Global, kinds[0]);
        Assert.Equal(CSharpHighlighter.Kind.Type, kinds[call.IndexOf("Vm", StringComparison.Ordinal)]);
        Assert.Equal(CSharpHighlighter.Kind.Type, kinds[call.IndexOf("Workload", StringComparison.Ordinal)]);
        Assert.Equal(CSharpHighlighter.Kind.None, kinds[call.IndexOf("Create", StringComparison.Ordinal)]);
    }

    [Theory]
    [InlineData("var y = 5", "var y = 5;")]            // complete but for the semicolon: added
    [InlineData("Console.WriteLine(1)", "Console.WriteLine(1)")] // complete as it is (a trailing expression)
    [InlineData("x + 2", "x + 2")]                     // an expression: its value is shown
    [InlineData("for (;;)", null)]                      // a semicolon would make an empty loop: a new line instead
    [InlineData("int F(int a)", null)]
    [InlineData("var s = new[] {", null)]
    [InlineData("var s = \"open\n\n", "var s = \"open")] // two empty lines submit what never completes
    [InlineData("#help", "#help")]
    public void Enter_submits_complete_code_and_code_missing_only_its_semicolon(string text, string? submitted) =>
        Assert.Equal(submitted, TerminalLineSource.Submission(text));

    [Theory]
    [InlineData("var x = 1;", true)]
    [InlineData("int F(int a)", false)]
    [InlineData("var s = new[] {", false)]
    [InlineData("var s = \"unterminated", false)] // Roslyn waits for more; two empty lines end it in the REPL
    public void Enter_continues_only_an_incomplete_submission(string text, bool complete) =>
        Assert.Equal(complete, MetaCommands.IsCompleteSubmission(text));
}
