"""The command line: `freezetune` subcommands (commands.py) and the process entry point (console.py)."""
