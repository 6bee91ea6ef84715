// Placeholder entry point; replaced by Cli/.
return 0;
