namespace VirtLab.Sdk;

/// <summary>Version of the SDK contract. A plugin targets the major of the VirtLab.Sdk it was compiled
/// against (recorded in its assembly reference); the shell refuses plugins built for another major.</summary>
public static class SdkVersion
{
    public static Version Current { get; } = typeof(SdkVersion).Assembly.GetName().Version ?? new Version(1, 0);
    public static int Major => Current.Major;
}
