"""The command line's schema: one dataclass per command is its flags, its YAML keys and its --help text.

The run configuration itself is the library's (config/); this package only turns argv and files
into those objects and adds the options of the commands that are not runs (plan, advise, report...).
"""
