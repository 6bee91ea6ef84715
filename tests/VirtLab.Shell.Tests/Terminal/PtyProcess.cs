using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace VirtLab.Shell.Tests.Terminal;

/// <summary>
/// A command on a real pseudo-terminal that the test owns: the test holds the master side, types keys into it and
/// reads the screen from it; the command gets the slave as stdin/stdout/stderr and as its controlling terminal
/// (so Ctrl+C typed on it raises SIGINT, as in a terminal emulator).
/// Not script(1): util-linux 2.38's script can hang after its child exits when its output is a pipe
/// (util-linux issue 2562), which made a CI run fail; here nothing stands between the test and the terminal.
/// </summary>
public sealed partial class PtyProcess : IDisposable
{
    private readonly Process _process;
    private readonly FileStream _master;
    private readonly StringBuilder _screen = new();
    private readonly Thread _reader;

    /// <param name="columns">Window width the command sees (TIOCGWINSZ).</param>
    public PtyProcess(string workingDirectory, IReadOnlyDictionary<string, string?> environment, int columns, int rows, params string[] command)
    {
        var fd = PosixOpenpt(O_RDWR | O_NOCTTY);
        if (fd < 0) throw new IOException($"posix_openpt failed: errno {Marshal.GetLastPInvokeError()}");
        _master = new FileStream(new SafeFileHandle(fd, ownsHandle: true), FileAccess.ReadWrite, bufferSize: 0);
        if (Grantpt(fd) != 0 || Unlockpt(fd) != 0) throw new IOException($"grantpt/unlockpt failed: errno {Marshal.GetLastPInvokeError()}");
        var size = new WinSize { Rows = (ushort)rows, Columns = (ushort)columns };
        if (Ioctl(fd, TIOCSWINSZ, ref size) != 0) throw new IOException($"TIOCSWINSZ failed: errno {Marshal.GetLastPInvokeError()}");
        var slave = SlaveName(fd);

        // sh opens the slave for stdio, then setsid(1) makes a new session whose controlling terminal is stdin.
        var psi = new ProcessStartInfo("/bin/sh")
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
        };
        foreach (var a in new[] { "-c", "exec /usr/bin/setsid -w -c \"$@\" <\"$0\" >\"$0\" 2>&1", slave }) psi.ArgumentList.Add(a);
        foreach (var a in command) psi.ArgumentList.Add(a);
        psi.Environment["TERM"] = "xterm";
        foreach (var (k, v) in environment)
            if (v is null) psi.Environment.Remove(k); else psi.Environment[k] = v;
        _process = Process.Start(psi)!;
        _reader = new Thread(ReadLoop) { IsBackground = true, Name = "pty master" };
        _reader.Start();
    }

    /// <summary>Everything the command wrote to the terminal so far, escape sequences included.</summary>
    public string Screen { get { lock (_screen) return _screen.ToString(); } }

    public int ExitCode => _process.ExitCode;

    public bool HasExited => _process.HasExited;

    /// <summary>Types <paramref name="keys"/> on the terminal ("\x03" is Ctrl+C, "\r" is Enter).</summary>
    public void Type(string keys)
    {
        _master.Write(Encoding.UTF8.GetBytes(keys));
        _master.Flush();
    }

    /// <summary>Waits until the screen contains <paramref name="text"/>; false on timeout.</summary>
    public bool WaitFor(string text, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (!Screen.Contains(text, StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > deadline) return false;
            Thread.Sleep(20);
        }
        return true;
    }

    /// <summary>Waits for the command to exit and for the terminal to drain (the reader sees EIO once no slave is open).</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout)) return false;
        _process.WaitForExit();
        return _reader.Join(TimeSpan.FromSeconds(10));
    }

    private void ReadLoop()
    {
        var buffer = new byte[4096];
        var decoder = Encoding.UTF8.GetDecoder();
        var chars = new char[Encoding.UTF8.GetMaxCharCount(buffer.Length)];
        try
        {
            int n;
            while ((n = _master.Read(buffer, 0, buffer.Length)) > 0)
            {
                var c = decoder.GetChars(buffer, 0, n, chars, 0);
                lock (_screen) _screen.Append(chars, 0, c);
            }
        }
        catch (IOException) { } // EIO: the last slave descriptor closed — the command and its children are gone
        catch (ObjectDisposedException) { }
    }

    public void Dispose()
    {
        try { if (!_process.HasExited) _process.Kill(entireProcessTree: true); } catch (InvalidOperationException) { }
        _process.WaitForExit(10_000);
        _process.Dispose();
        _master.Dispose();
    }

    private static string SlaveName(int fd)
    {
        var buffer = new byte[128];
        if (PtsnameR(fd, buffer, (nuint)buffer.Length) != 0) throw new IOException($"ptsname_r failed: errno {Marshal.GetLastPInvokeError()}");
        return Encoding.ASCII.GetString(buffer, 0, Array.IndexOf(buffer, (byte)0));
    }

    private const int O_RDWR = 0x2, O_NOCTTY = 0x100;
    private const nuint TIOCSWINSZ = 0x5414;

    [StructLayout(LayoutKind.Sequential)]
    private struct WinSize { public ushort Rows, Columns, XPixels, YPixels; }

    [LibraryImport("libc", EntryPoint = "posix_openpt", SetLastError = true)]
    private static partial int PosixOpenpt(int flags);

    [LibraryImport("libc", EntryPoint = "grantpt", SetLastError = true)]
    private static partial int Grantpt(int fd);

    [LibraryImport("libc", EntryPoint = "unlockpt", SetLastError = true)]
    private static partial int Unlockpt(int fd);

    [LibraryImport("libc", EntryPoint = "ptsname_r", SetLastError = true)]
    private static partial int PtsnameR(int fd, [Out] byte[] buffer, nuint length);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int Ioctl(int fd, nuint request, ref WinSize size);
}
