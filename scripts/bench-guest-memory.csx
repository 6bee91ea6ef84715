// bench-guest-memory.csx — host access to guest memory through vm.Memory: the per-access cost of the bounds check and
// the teardown guard (every access completes on live memory or throws, even while another thread disposes the VM).
//
//   virtlab run scripts/bench-guest-memory.csx -- --memory 64M --reads 20000000 --backend sim
//
// Measures GuestMemory.Read<ulong> and Write<ulong> (8-byte accesses, the worst case for per-call overhead) and a
// 64 KiB block copy, as millions of calls per CPU-second (median of --rounds rounds).

using System.Diagnostics;

var memory = Arg("memory", 64.MiB(), test: 8.MiB());
var reads = Arg("reads", 20_000_000, test: 200_000);
var rounds = Arg("rounds", 7, test: 2);
var backend = Arg("backend", Backend.Auto);

var vm = Vm.Create(new VmOptions(memory) { Backend = backend });
var slot = vm.TestSlot;
var mask = (ulong)slot.Size.Bytes - 8;
Console.WriteLine($"{vm}; test slot at 0x{slot.Gpa:x}");

// Each loop is a static local function so the timed code is the JIT's optimised tier, not top-level OSR code.
static ulong ReadLoop(GuestMemory m, ulong gpa, ulong mask, int n)
{
    ulong sum = 0;
    for (int i = 0; i < n; i++) sum += m.Read<ulong>(gpa + (((ulong)i * 4104) & mask & ~7UL));
    return sum;
}
static void WriteLoop(GuestMemory m, ulong gpa, ulong mask, int n)
{
    for (int i = 0; i < n; i++) m.Write(gpa + (((ulong)i * 4104) & mask & ~7UL), (ulong)i);
}
static void CopyLoop(GuestMemory m, ulong gpa, long size, byte[] buffer, int n)
{
    for (int i = 0; i < n; i++) m.Read(gpa + (ulong)((long)i * buffer.Length % (size - buffer.Length + 1) / 8 * 8), buffer);
}

// Rates per second of CPU time consumed by this process (the loop is its only busy thread): on a host shared with
// other load, wall-clock rates mostly measure the scheduler; CPU time does not count the time we were not running.
ulong sink = 0;
var self = Process.GetCurrentProcess();
double Rate(Action body, long calls)
{
    var w = Stopwatch.StartNew();
    while (w.ElapsedMilliseconds < 300) body();   // warm up: tier-1 code is what gets timed
    var samples = new List<double>();
    for (int r = 0; r < rounds; r++)
    {
        self.Refresh();
        var cpu0 = self.TotalProcessorTime;
        body();
        self.Refresh();
        samples.Add(calls / (self.TotalProcessorTime - cpu0).TotalSeconds / 1e6);
    }
    samples.Sort();
    return samples[samples.Count / 2];
}

var read = Rate(() => sink += ReadLoop(vm.Memory, slot.Gpa, mask, reads), reads);
var write = Rate(() => WriteLoop(vm.Memory, slot.Gpa, mask, reads), reads);
var buffer = new byte[64 << 10];
var copies = Math.Max(1, reads / 1000);
var copy = Rate(() => CopyLoop(vm.Memory, slot.Gpa, slot.Size.Bytes, buffer, copies), copies);
Console.WriteLine($"Read<ulong>  {read,8:F1} M calls/s ({1e3 / read:F2} ns each)");
Console.WriteLine($"Write<ulong> {write,8:F1} M calls/s ({1e3 / write:F2} ns each)");
Console.WriteLine($"Read 64 KiB  {copy * 1e6 * buffer.Length / 1e9,8:F1} GB/s");
Result("read_ulong_mcalls_per_second", read);
Result("write_ulong_mcalls_per_second", write);
Result("read_64k_gbps", copy * 1e6 * buffer.Length / 1e9);
Expect(vm.Memory.Read<ulong>(slot.Gpa + 8) == vm.Memory.Read<ulong>(slot.Gpa + 8), "reads are stable");
Console.WriteLine($"(sink {sink % 10})");
vm.Dispose();
