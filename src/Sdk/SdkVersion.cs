namespace VirtLab.Sdk;

/// <summary>Version of the SDK contract. A plugin targets the major of the VirtLab.Sdk it was compiled
/// against (recorded in its assembly reference); the shell refuses plugins built for another major.</summary>
public static class SdkVersion
{
    /// <summary>This SDK's version (its assembly version: major.minor.0.0).</summary>
    public static Version Current { get; } = typeof(SdkVersion).Assembly.GetName().Version ?? new Version(1, 0);
    /// <summary>The SDK major: plugins built against another major are refused.</summary>
    public static int Major => Current.Major;

    /// <summary>How every place shows an SDK version (this SDK's, or the one a plugin was built against): "major.minor",
    /// e.g. "1.0". The contract is the assembly version; build and revision carry no meaning.</summary>
    public static string Format(Version version) => $"{version.Major}.{version.Minor}";

    /// <summary>This SDK's version as shown everywhere (<see cref="Format"/>).</summary>
    public static string Text => Format(Current);
}
