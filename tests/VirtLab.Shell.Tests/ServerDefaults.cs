using System.Runtime.CompilerServices;

namespace VirtLab.Shell.Tests;

internal static class ServerDefaults
{
    /// <summary>Every virtlab process a test starts compiles in-process unless the test asks for the compile server
    /// (CompileServerTests): tests assert what a run loads, and no test may leave a server behind.</summary>
    [ModuleInitializer]
    internal static void TurnTheCompileServerOff() => Environment.SetEnvironmentVariable("VIRTLAB_SERVER", "0");
}
