using VirtLab.Sdk.Machine;
using Xunit;
using Xunit.Abstractions;
using Xunit.Sdk;

namespace VirtLab.Sdk.Tests.Machine;

/// <summary>Marks a conformance-suite class that runs on the KVM backend: its facts skip, with the reason, where KVM is not usable.</summary>
[AttributeUsage(AttributeTargets.Class)]
public sealed class RequiresKvmAttribute : Attribute;

/// <summary>
/// A fact of the backend conformance suite. Declared once on the abstract suite, it runs for each derived class;
/// in a <see cref="RequiresKvmAttribute"/> class it is skipped at run time when <c>/dev/kvm</c> is not usable.
/// </summary>
[XunitTestCaseDiscoverer("VirtLab.Sdk.Tests.Machine.BackendFactDiscoverer", "VirtLab.Sdk.Tests")]
[AttributeUsage(AttributeTargets.Method)]
public sealed class BackendFactAttribute : FactAttribute;

public sealed class BackendFactDiscoverer(IMessageSink diagnosticMessageSink) : IXunitTestCaseDiscoverer
{
    public IEnumerable<IXunitTestCase> Discover(ITestFrameworkDiscoveryOptions discoveryOptions, ITestMethod testMethod, IAttributeInfo factAttribute)
        => [new BackendTestCase(diagnosticMessageSink, discoveryOptions.MethodDisplayOrDefault(), discoveryOptions.MethodDisplayOptionsOrDefault(), testMethod)];
}

/// <summary>Computes the skip reason when the case is initialised (also after deserialisation), so nothing extra is serialised.</summary>
public sealed class BackendTestCase : XunitTestCase
{
    [Obsolete("Called by the de-serializer; should only be called by deriving classes for de-serialization purposes")]
    public BackendTestCase() { }

    public BackendTestCase(IMessageSink sink, TestMethodDisplay display, TestMethodDisplayOptions options, ITestMethod method)
        : base(sink, display, options, method) { }

    protected override string GetSkipReason(IAttributeInfo factAttribute)
    {
        var reason = base.GetSkipReason(factAttribute);
        if (reason is not null) return reason;
        if (TestMethod.TestClass.Class.GetCustomAttributes(typeof(RequiresKvmAttribute)).Any() && !Vm.IsKvmUsable(out var why))
            return "KVM backend not usable here: " + why;
        return null!;
    }
}
