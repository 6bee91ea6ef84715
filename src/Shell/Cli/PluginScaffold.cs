namespace VirtLab.Shell.Cli;

/// <summary>
/// The files <c>virtlab new plugin NAME</c> writes: a plugin project built against the VirtLab.Sdk package from a local
/// folder, a sample experiment on the machine API (a VM with dirty logging), an xunit project and a recipe. The test
/// package versions are the ones this repository's tests use (restores offline from the machine's package cache).
/// </summary>
internal static class PluginScaffold
{
    public static IEnumerable<(string Path, string Text)> Files(string name, string packagesRelative, string sdkVersion, string tfm)
    {
        var src = $"src/{name}/";
        var tests = $"tests/{name}.Tests/";
        yield return ("Directory.Build.props", $"""
            <!-- Shared by the plugin and its tests. Also stops MSBuild from importing a Directory.Build.props further up. -->
            <Project>
              <PropertyGroup>
                <TargetFramework>{tfm}</TargetFramework>
                <Nullable>enable</Nullable>
                <ImplicitUsings>enable</ImplicitUsings>
                <LangVersion>latest</LangVersion>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
              </PropertyGroup>
            </Project>

            """);
        yield return ("nuget.config", $"""
            <?xml version="1.0" encoding="utf-8"?>
            <!-- The VirtLab.Sdk package comes from a local folder (virtlab pack-sdk DIR writes it); nothing else needs a network
                 when the other packages are in the machine's package cache. -->
            <configuration>
              <packageSources>
                <add key="virtlab-sdk" value="{packagesRelative}" />
              </packageSources>
            </configuration>

            """);
        yield return (name + ".slnx", $"""
            <Solution>
              <Project Path="{src}{name}.csproj" />
              <Project Path="{tests}{name}.Tests.csproj" />
            </Solution>

            """);
        yield return (".gitignore", "bin/\nobj/\nplugins/\n.cache/\n");
        yield return (src + name + ".csproj", $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <AssemblyName>{name}</AssemblyName>
                <RootNamespace>{name}</RootNamespace>
                <Version>0.1.0</Version>
                <Description>{name}: dirty pages of a VM after a strided write.</Description>
                <!-- The package's build targets copy each build to $(VirtLabPluginsDir){name}/; give plugins/ to the shell's plugins option. -->
                <VirtLabPluginsDir>$(MSBuildThisFileDirectory)../../plugins/</VirtLabPluginsDir>
              </PropertyGroup>
              <ItemGroup>
                <!-- The SDK major this plugin targets is this package's major; the shell refuses another one. -->
                <PackageReference Include="VirtLab.Sdk" Version="{sdkVersion}" />
              </ItemGroup>
            </Project>

            """);
        yield return (src + name + "Plugin.cs", $$"""
            using VirtLab.Sdk.Measure;
            using VirtLab.Sdk.Plugins;

            namespace {{name}};

            /// <summary>The plugin: scripts see <see cref="{{name}}Api"/> as the global <c>{{name}}</c>.</summary>
            public sealed class {{name}}Plugin : VirtLabPlugin<{{name}}Api>
            {
                /// <inheritdoc/>
                public override string GlobalName => "{{name}}";

                /// <inheritdoc/>
                public override string Description => "dirty pages of a VM after a strided write";

                /// <inheritdoc/>
                protected override {{name}}Api Create(PluginContext context) => new();

                /// <summary>Runs the hot path once on a scratch VM so a recipe's first timed call does not measure the JIT.</summary>
                public override void WarmUp() => new {{name}}Api().DirtyScan(2.MiB());
            }

            """);
        yield return (src + name + "Api.cs", $$"""
            using VirtLab.Sdk.Machine;
            using VirtLab.Sdk.Measure;

            namespace {{name}};

            /// <summary>What <see cref="{{name}}Api.DirtyScan"/> saw.</summary>
            /// <param name="Backend">The backend the VM ran on (Kvm or Sim).</param>
            /// <param name="Pages">Pages of the test slot.</param>
            /// <param name="DirtyPages">Pages the dirty log reported after the strided write.</param>
            public sealed record DirtyScanResult(string Backend, long Pages, long DirtyPages)
            {
                /// <summary>Dirty pages over all pages.</summary>
                public double DirtyFraction => Pages == 0 ? 0 : (double)DirtyPages / Pages;
            }

            /// <summary>The script global <c>{{name}}</c>.</summary>
            public sealed class {{name}}Api
            {
                /// <summary>Bytes between two written pages in <see cref="DirtyScan"/>.</summary>
                public const long DefaultStride = 8192;

                /// <summary>
                /// Creates a VM with a test slot of <paramref name="memory"/>, populates it with dirty logging off, turns logging
                /// on (KVM_MEM_LOG_DIRTY_PAGES), lets the vCPU write one page every <paramref name="stride"/> bytes and reads the
                /// dirty log (KVM_GET_DIRTY_LOG). Runs on KVM when /dev/kvm works, else on the simulator (same semantics).
                /// </summary>
                public DirtyScanResult DirtyScan(Size memory, long stride = DefaultStride, Backend backend = Backend.Auto)
                {
                    if (stride <= 0 || stride % 4096 != 0)
                        throw new ArgumentOutOfRangeException(nameof(stride), stride, "stride must be a positive multiple of 4096 bytes");
                    using var vm = Vm.Create(memory, backend: backend);
                    var slot = vm.TestSlot;
                    vm.Run(Workload.Write());
                    slot.LogDirtyPages = true;
                    vm.Run(Workload.Write(stride: stride));
                    var dirty = slot.GetDirtyLog();
                    return new DirtyScanResult(vm.Backend.ToString(), slot.Pages, dirty.Count);
                }
            }

            """);
        yield return (tests + name + ".Tests.csproj", $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <IsPackable>false</IsPackable>
                <IsTestProject>true</IsTestProject>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Microsoft.NET.Test.Sdk" Version="18.0.1" />
                <PackageReference Include="xunit" Version="2.9.3" />
                <PackageReference Include="xunit.runner.visualstudio" Version="3.1.5" />
              </ItemGroup>
              <ItemGroup>
                <!-- Brings VirtLab.Sdk along (the tests run the SDK themselves; the shell is not involved). -->
                <ProjectReference Include="../../{src}{name}.csproj" />
              </ItemGroup>
            </Project>

            """);
        yield return (tests + "DirtyScanTests.cs", $$"""
            using VirtLab.Sdk.Machine;
            using VirtLab.Sdk.Measure;
            using Xunit;

            namespace {{name}}.Tests;

            public class DirtyScanTests
            {
                [Fact]
                public void EveryOtherPageIsDirtyAfterAnEightKiBStride()
                {
                    var r = new {{name}}Api().DirtyScan(8.MiB(), stride: 8192, backend: Backend.Sim);
                    Assert.Equal(8.MiB().Bytes / 4096, r.Pages);
                    Assert.Equal(r.Pages / 2, r.DirtyPages);
                }

                [Fact]
                public void AStrideThatIsNoPageMultipleIsRefused()
                {
                    var e = Assert.Throws<ArgumentOutOfRangeException>(() => new {{name}}Api().DirtyScan(2.MiB(), stride: 1000, backend: Backend.Sim));
                    Assert.Equal("stride", e.ParamName);
                }

                [Fact]
                public void ThePluginNamesItsGlobal() => Assert.Equal("{{name}}", new {{name}}Plugin().GlobalName);
            }

            """);
        yield return ($"recipes/{name}.csx", $$"""
            // {{name}}.csx — the {{name}} plugin's sample experiment: dirty pages after a strided write.
            //
            //   virtlab run --plugins plugins recipes/{{name}}.csx -- --memory 256M
            //   virtlab run --watch --plugins plugins recipes/{{name}}.csx      (re-runs on every change and plugin rebuild)

            var memory = Arg("memory", 64.MiB(), test: 8.MiB());
            var scan = Stage("dirty scan", () => {{name}}.DirtyScan(memory));
            Show(scan);
            Expect(scan.DirtyPages == scan.Pages / 2, "every other page is dirty");
            Result("backend", scan.Backend);
            Result("dirtyPages", scan.DirtyPages);

            """);
        yield return ("README.md", $$"""
            # {{name}}: a VirtLab plugin

            Scaffolded by `virtlab new plugin {{name}}`. See VirtLab's docs/PLUGINS.md for the contract and the SDK.

            ```sh
            dotnet build -c Release                                # the plugin lands in plugins/{{name}}/
            dotnet test                                            # unit tests (Sim backend, no shell)
            virtlab run --plugins plugins recipes/{{name}}.csx      # the recipe
            virtlab run --watch --plugins plugins recipes/{{name}}.csx
            virtlab --plugins plugins                              # REPL: `{{name}}.DirtyScan(16.MiB())`; a rebuild hot-swaps
            virtlab init recipes --plugins plugins                 # editor completion in recipes/*.csx
            ```

            The VirtLab.Sdk package comes from `{{packagesRelative}}/` (see nuget.config); `virtlab pack-sdk DIR` writes a newer one.
            NuGet caches a package by version: after the SDK changed without a new version, clear it with
            `dotnet nuget locals global-packages --clear` (or remove `~/.nuget/packages/virtlab.sdk/`).

            """);
    }
}
