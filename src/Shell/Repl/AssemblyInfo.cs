using System.Runtime.CompilerServices;

// The REPL's pure pieces (history format, #save rewriting, completion word mapping, highlighting) are unit-tested.
[assembly: InternalsVisibleTo("VirtLab.Shell.Tests")]
