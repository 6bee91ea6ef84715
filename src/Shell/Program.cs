VirtLab.Shell.Cli.StartupTrace.Mark("main");
VirtLab.Sdk.RunLog.Default = Console.Out; // what the SDK reports outside results (e.g. a guest's print ucall)
return VirtLab.Shell.Cli.CommandLine.Run(args);
