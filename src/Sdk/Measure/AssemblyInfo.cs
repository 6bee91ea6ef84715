using System.Runtime.CompilerServices;

// Tests reach internal helpers (git HEAD lookup, argument text parsing) directly.
[assembly: InternalsVisibleTo("VirtLab.Sdk.Tests")]
