"""Workers: the registry of running codebuddy processes and the remote daemons added by hand."""
