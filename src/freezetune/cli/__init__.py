"""The command line: `freezetune` subcommands (commands.py, train.py) and the process entry point
(console.py)."""
