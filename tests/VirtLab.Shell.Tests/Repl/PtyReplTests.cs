using Xunit;

namespace VirtLab.Shell.Tests.Repl;

/// <summary>The REPL in a real pseudo-terminal: the line editor, completion menu, signature help, quick info, history
/// search and type-ahead, each against a real evaluation host.</summary>
[Collection("repl")]
public sealed class PtyReplTests
{
    private static PtyReplProcess Start(Dictionary<string, string>? env = null)
    {
        return new PtyReplProcess(env);
    }

    [PtyFact]
    public void Keys_typed_before_the_prompt_are_not_lost_nor_their_Enter()
    {
        using var repl = Start();
        repl.Keys("1 + 41\r");             // at once: the REPL is still starting
        repl.WaitFor(@"^42\r?$");
        repl.Keys("Thread.Sleep(1500); 6 * 7\r");
        repl.WaitFor(@"> Thread\.Sleep");   // the editor drew it: the evaluation runs now
        repl.Keys("\"typed ahead\"\r");     // typed during the evaluation
        repl.WaitFor(@"^""typed ahead""\r?$"); // its value: the keys and their Enter reached the next prompt
        Assert.Equal(2, repl.Count(@"^42\r?$"));
        repl.Keys("\u0004");               // Ctrl+D on an empty line leaves
        Assert.Equal(0, repl.WaitForExit());
    }

    [PtyFact]
    public void Menu_completion_offers_named_arguments_with_their_signature()
    {
        using var repl = Start();
        repl.Keys("1\r");
        repl.WaitFor(@"^1\r?$");           // the host is up
        repl.Keys("var w = Workload.Write(pa\t");
        repl.WaitFor(@"passes:");          // one candidate: put in at once
        repl.Keys(" 3);\r");
        repl.Keys("w.Passes\r");
        repl.WaitFor(@"^3\r?$");
        repl.Keys("Workload.");            // "." opens the menu: the statics, each with its signature
        repl.WaitFor(@"ƒ Write +Workload Workload\.Write\(int slot = 1, long stride = 4096");
        // Ctrl+U closes the menu and clears the line. (Not Esc then Ctrl+U: in one read a terminal's Esc + key is
        // Alt+key, so the pair would arrive as Alt+Ctrl+U.)
        repl.Keys("\u0015");
        repl.Keys("\u0004");
        Assert.Equal(0, repl.WaitForExit());
    }

    [PtyFact]
    public void Typing_after_a_dot_is_not_held_up_and_the_menu_is_for_the_final_text()
    {
        using var repl = Start();
        repl.Keys("var text = \"hello\";\r");
        repl.Keys("text.Length\r");
        repl.WaitFor(@"^5\r?$");            // the host is up
        repl.Keys("text.");                  // the host is asked about "text." …
        repl.Keys("Substr");                 // … and the keys typed meanwhile all arrive
        repl.WaitFor(@"ƒ Substring +string string\.Substring\(int startIndex");
        repl.Keys("\t(1)\r");                // Tab takes it
        repl.WaitFor(@"^""ello""\r?$");
        repl.Keys("\u0004");
        Assert.Equal(0, repl.WaitForExit());
    }

    [PtyFact]
    public void Wide_characters_place_the_caret_by_their_width_and_a_Size_prints_as_a_size()
    {
        using var repl = Start();
        repl.Keys("var s = \"日本語\";");
        repl.WaitFor(@"> var s = ""日本語"";");
        Assert.Contains("\r\u001b[19C", repl.Raw);  // the caret after 2 + 9 + 6 + 2 columns, not 2 + 14 characters
        repl.Keys("\r");
        repl.Keys("s.Length\r");
        repl.WaitFor(@"^3\r?$");
        repl.Keys("Console.WriteLine(1.GiB());\r");
        repl.WaitFor(@"^1 GiB\r?$");
        repl.Keys("\u0004");
        Assert.Equal(0, repl.WaitForExit());
    }

    [PtyFact]
    public void Signature_help_while_typing_a_call_and_quick_info_on_F1()
    {
        using var repl = Start();
        repl.Keys("1\r");
        repl.WaitFor(@"^1\r?$");
        repl.Keys("Workload.Write(1, ");
        repl.WaitFor(@"stride: ");           // the parameter being typed and its doc
        repl.Keys("\u0015Vm");
        repl.Keys(PtyReplProcess.F1);
        repl.WaitFor(@"class VirtLab\.Sdk\.Machine\.Vm|class Vm");
        repl.Keys("\u0015\u0004");
        Assert.Equal(0, repl.WaitForExit());
    }

    [PtyFact]
    public void A_recalled_multi_line_entry_is_edited_on_any_line_and_reverse_search_finds_old_entries()
    {
        using var repl = Start();
        repl.Keys("var remembered = 21;\r");
        repl.Keys("if (remembered > 0)\r{\rConsole.WriteLine(\"first\");\r}\r");
        repl.WaitFor(@"^first\r?$");
        // Up recalls the whole entry (caret on its last line); Up again moves to the WriteLine line.
        repl.Keys(PtyReplProcess.Up + PtyReplProcess.Up + "\u0005" + PtyReplProcess.Left + PtyReplProcess.Left + PtyReplProcess.Left
                  + "\u0017" + "second" + "\r");
        repl.WaitFor(@"^second\r?$");
        repl.Keys("\u0012if (rem\u0012");     // Ctrl+R: the newest if (the edited one), Ctrl+R again: the older one
        repl.Keys("\r");
        repl.WaitForCount(@"^first\r?$", 2);
        repl.Keys("\u0012var rem\r");        // the declaration, run again
        repl.Keys("remembered * 2\r");
        repl.WaitFor(@"^42\r?$");
        Assert.Equal(2, repl.Count(@"^first\r?$"));
        Assert.Equal(1, repl.Count(@"^second\r?$"));
        repl.Keys("\u0004");
        Assert.Equal(0, repl.WaitForExit());
    }

    [PtyFact]
    public void VIRTLAB_COLOR_never_turns_off_prompt_colour_and_highlighting()
    {
        using var repl = Start(new() { ["VIRTLAB_COLOR"] = "never" });
        repl.Keys("var s = \"text\"; s.Length\r");
        repl.WaitFor(@"> var s");
        repl.Keys("\u0004");
        repl.WaitForExit();
        Assert.DoesNotContain("\u001b[33m", repl.Raw);  // the prompt's yellow
        Assert.DoesNotContain("\u001b[0;38", repl.Raw); // highlighting
        Assert.DoesNotContain("\u001b[38", repl.Raw);

        using var colored = Start();
        colored.Keys("var s = \"text\";\r");
        colored.WaitFor(@"> var s");
        colored.Keys("\u0004");
        colored.WaitForExit();
        Assert.Contains("\u001b[0;38", colored.Raw);    // the same line, highlighted, by default
    }
}
