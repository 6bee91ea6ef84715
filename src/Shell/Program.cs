return VirtLab.Shell.Cli.CommandLine.Run(args);
