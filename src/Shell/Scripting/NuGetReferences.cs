using System.Collections.Concurrent;
using System.Collections.Immutable;
using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.CodeAnalysis;

namespace VirtLab.Shell.Scripting;

/// <summary>
/// <c>#r "nuget: Name, Version"</c> (the dotnet-script convention; the version may be a NuGet range such as <c>1.*</c>,
/// or left out for the newest). The package is restored through the .NET SDK: a one-package project is generated
/// under the cache (<c>$VIRTLAB_CACHE/../nuget/…</c>) and <c>dotnet restore</c>d with the nuget.config found from the
/// script's folder up (NuGet's own rule; a test points it at a local folder), into the usual global packages folder.
/// The reference is the runtime assemblies of the package and of its whole dependency closure, as
/// project.assets.json lists them. A package that cannot be restored gives an error saying why (NU1101 …), in place of
/// Roslyn's "metadata file could not be found".
/// </summary>
internal sealed class NuGetMetadataResolver(MetadataReferenceResolver inner) : MetadataReferenceResolver
{
    private readonly MetadataReferenceResolver _inner = inner;
    private const string Prefix = "nuget:";
    private static readonly ConcurrentDictionary<string, string> Errors = new(StringComparer.Ordinal);
    private static readonly ConcurrentDictionary<string, IReadOnlyList<string>> Restored = new(StringComparer.Ordinal);

    private static readonly ConcurrentDictionary<string, string> Closure = new(StringComparer.OrdinalIgnoreCase); // assembly name → path
    private static string Tfm => $"net{Environment.Version.Major}.{Environment.Version.Minor}";

    public override bool ResolveMissingAssemblies => true;

    public override PortableExecutableReference? ResolveMissingAssembly(MetadataReference definition, AssemblyIdentity referenceIdentity) =>
        Closure.TryGetValue(referenceIdentity.Name, out var path) ? MetadataReference.CreateFromFile(path)
            : _inner.ResolveMissingAssemblies ? _inner.ResolveMissingAssembly(definition, referenceIdentity) : null;

    /// <summary>Every assembly of the restored closures: the load context must find them all, the compiler saw only some.</summary>
    public static IReadOnlyCollection<string> ClosurePaths => [.. Closure.Values];

    public static bool IsNuGet(string reference) => reference.TrimStart().StartsWith(Prefix, StringComparison.OrdinalIgnoreCase);

    /// <summary>Why <paramref name="reference"/> could not be restored (for the CS0006 it leaves), or null.</summary>
    public static string? ErrorFor(string reference) => Errors.TryGetValue(reference, out var e) ? e : null;

    public override ImmutableArray<PortableExecutableReference> ResolveReference(string reference, string? baseFilePath, MetadataReferenceProperties properties)
    {
        if (!IsNuGet(reference)) return _inner.ResolveReference(reference, baseFilePath, properties);
        var dir = baseFilePath is { Length: > 0 } && Path.GetDirectoryName(Path.GetFullPath(baseFilePath)) is { } d ? d : Directory.GetCurrentDirectory();
        try
        {
            var (id, version) = Parse(reference);
            var paths = Restored.GetOrAdd($"{id}\n{version}\n{FindConfig(dir)}", _ => Restore(id, version, FindConfig(dir)));
            Errors.TryRemove(reference, out _);
            // Roslyn takes one reference per #r (more: NotSupportedException): the package's own assembly here, the rest of
            // the closure when the compiler asks for it (ResolveMissingAssembly), and all of it in the load context.
            foreach (var p in paths) Closure[Path.GetFileNameWithoutExtension(p)] = p;
            var main = paths.FirstOrDefault(p => Path.GetFileNameWithoutExtension(p).Equals(id, StringComparison.OrdinalIgnoreCase))
                ?? paths.FirstOrDefault(p => p.Contains($"/{id.ToLowerInvariant()}/", StringComparison.Ordinal))
                ?? throw new NuGetRestoreException($"package {id} {version} has no assembly for {Tfm} (nothing under lib/ that this runtime can use)");
            return [MetadataReference.CreateFromFile(main, properties)];
        }
        catch (NuGetRestoreException e)
        {
            Errors[reference] = e.Message;
            return [];
        }
    }

    /// <summary>"nuget: Name, 1.2.3" or "nuget:Name/1.2.3" → (Name, 1.2.3); no version → "*" (the newest).</summary>
    public static (string Id, string Version) Parse(string reference)
    {
        var body = reference.Trim()[Prefix.Length..].Trim();
        var parts = body.Split([',', '/'], 2, StringSplitOptions.TrimEntries);
        var id = parts[0];
        var version = parts.Length > 1 && parts[1].Length > 0 ? parts[1] : "*";
        if (id.Length == 0 || id.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '.' or '_' or '-')))
            throw new NuGetRestoreException($"'{reference}' names no package; write #r \"nuget: Name, Version\" (e.g. #r \"nuget: Humanizer.Core, 2.14.1\")");
        if (version.Any(c => !(char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '*' or '[' or ']' or '(' or ')' or ',' or '+')))
            throw new NuGetRestoreException($"'{version}' in '{reference}' is not a NuGet version or range (e.g. 2.14.1, 2.*, [2.0,3.0))");
        return (id, version);
    }

    /// <summary>nuget.config (any case) in <paramref name="dir"/> or a parent, as NuGet looks for it; null: the user's defaults.</summary>
    private static string? FindConfig(string dir)
    {
        for (var d = new DirectoryInfo(dir); d is not null; d = d.Parent)
        {
            FileInfo[] files;
            try { files = d.GetFiles(); }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException) { continue; }
            if (files.FirstOrDefault(f => f.Name.Equals("nuget.config", StringComparison.OrdinalIgnoreCase)) is { } f) return f.FullName;
        }
        return null;
    }

    private static IReadOnlyList<string> Restore(string id, string version, string? config)
    {
        var tfm = Tfm;
        var key = Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes($"{id}\n{version}\n{config}\n{tfm}")))[..16];
        var dir = Path.Combine(Path.GetDirectoryName(RecipeCache.DefaultRoot())!, "nuget", $"{id.ToLowerInvariant()}-{key}");
        var assets = Path.Combine(dir, "obj", "project.assets.json");
        // A fixed version restored before is reused as it is (a range or "*" is restored again: it may move).
        var fixedVersion = !version.Any(c => c is '*' or '[' or '(' or ',');
        if (fixedVersion && File.Exists(assets) && TryRead(assets, tfm) is { } known && known.All(File.Exists)) return known;

        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, "restore.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <!-- Generated by virtlab for #r "nuget: {id}, {version}": restored only, never built. -->
              <PropertyGroup>
                <TargetFramework>{tfm}</TargetFramework>
                <DisableImplicitNuGetFallbackFolder>true</DisableImplicitNuGetFallbackFolder>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="{id}" Version="{version}" />
              </ItemGroup>
            </Project>
            """);
        var psi = new ProcessStartInfo(DotnetPath()) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false, WorkingDirectory = dir };
        foreach (var a in new[] { "restore", Path.Combine(dir, "restore.csproj"), "--nologo", "-v", "q" }) psi.ArgumentList.Add(a);
        if (config is not null) { psi.ArgumentList.Add("--configfile"); psi.ArgumentList.Add(config); }
        psi.Environment["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1";
        psi.Environment["DOTNET_NOLOGO"] = "1";
        psi.Environment["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1";
        // Inside a recipe run these point at the shell's own build; restore must use the SDK's defaults.
        psi.Environment.Remove("MSBuildExtensionsPath");
        psi.Environment.Remove("MSBUILD_EXE_PATH");
        psi.Environment.Remove("MSBuildSDKsPath");
        Process p;
        try { p = Process.Start(psi) ?? throw new NuGetRestoreException("cannot start dotnet"); }
        catch (System.ComponentModel.Win32Exception e) { throw new NuGetRestoreException($"cannot run '{psi.FileName} restore' ({e.Message}); #r \"nuget: …\" needs the .NET SDK"); }
        using (p)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(TimeSpan.FromMinutes(3)))
            {
                try { p.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
                throw new NuGetRestoreException($"restoring {id} {version} took over 3 minutes; gave up");
            }
            var log = stdout.Result + stderr.Result;
            if (p.ExitCode != 0)
            {
                // "…/restore.csproj : error NU1101: Unable to find package X. …" → "NU1101: Unable to find package X. …"
                var errors = log.Split('\n').Select(l => l.Trim()).Where(l => l.Contains("error", StringComparison.OrdinalIgnoreCase))
                    .Select(l => l.Contains(": error ", StringComparison.Ordinal) ? l[(l.IndexOf(": error ", StringComparison.Ordinal) + 8)..] : l)
                    .Select(l => l.Replace($" [{Path.Combine(dir, "restore.csproj")}]", "", StringComparison.Ordinal)).Distinct().ToList();
                throw new NuGetRestoreException($"cannot restore {id} {version}{(config is null ? "" : $" (sources from {config})")}: " +
                    (errors.Count > 0 ? string.Join("; ", errors) : $"dotnet restore exited {p.ExitCode}"));
            }
        }
        return TryRead(assets, tfm) ?? throw new NuGetRestoreException($"dotnet restore of {id} {version} wrote no usable {assets}");
    }

    /// <summary>The runtime assemblies of every package in the closure, from project.assets.json; null if unreadable.</summary>
    private static IReadOnlyList<string>? TryRead(string assets, string tfm)
    {
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllBytes(assets));
            var root = doc.RootElement;
            var folder = root.GetProperty("packageFolders").EnumerateObject().First().Name;
            var libraries = root.GetProperty("libraries");
            var target = root.GetProperty("targets").EnumerateObject().First(t => t.Name == tfm || t.Name.StartsWith(tfm + "/", StringComparison.Ordinal)).Value;
            var paths = new List<string>();
            foreach (var package in target.EnumerateObject())
            {
                if (!package.Value.TryGetProperty("type", out var type) || type.GetString() != "package") continue;
                if (!package.Value.TryGetProperty("runtime", out var runtime)) continue;
                var dir = libraries.GetProperty(package.Name).GetProperty("path").GetString()!;
                foreach (var file in runtime.EnumerateObject())
                    if (file.Name.EndsWith(".dll", StringComparison.OrdinalIgnoreCase)) // "_._": nothing for this framework
                        paths.Add(Path.GetFullPath(Path.Combine(folder, dir, file.Name)));
            }
            return paths;
        }
        catch (Exception e) when (e is IOException or JsonException or KeyNotFoundException or InvalidOperationException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>The dotnet running us when it is the muxer; else the one on PATH.</summary>
    private static string DotnetPath() =>
        Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";

    /// <summary>"Name/Version" of the NuGet package an assembly path lies in (global packages folder layout
    /// <c>name/version/name.nuspec</c>), or null: what the run record lists.</summary>
    public static string? PackageOf(string assemblyPath)
    {
        for (var d = new DirectoryInfo(Path.GetDirectoryName(assemblyPath) ?? "/"); d?.Parent is not null; d = d.Parent)
        {
            var nuspec = d.Parent.Name is { Length: > 0 } idDir ? Path.Combine(d.FullName, idDir + ".nuspec") : null;
            if (nuspec is not null && File.Exists(nuspec))
            {
                try
                {
                    // The nuspec keeps the id's own spelling; the folder is lower case.
                    var xml = System.Xml.Linq.XDocument.Load(nuspec);
                    var id = xml.Descendants().FirstOrDefault(e => e.Name.LocalName == "id")?.Value ?? d.Parent.Name;
                    var version = xml.Descendants().FirstOrDefault(e => e.Name.LocalName == "version")?.Value ?? d.Name;
                    return $"{id}/{version}";
                }
                catch (System.Xml.XmlException) { return $"{d.Parent.Name}/{d.Name}"; }
            }
        }
        return null;
    }

    public override bool Equals(object? other) => other is NuGetMetadataResolver r && r._inner.Equals(_inner);
    public override int GetHashCode() => _inner.GetHashCode() ^ 0x6e75;
}

internal sealed class NuGetRestoreException(string message) : Exception(message);
