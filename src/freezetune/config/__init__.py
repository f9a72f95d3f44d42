"""The library's run configuration: every option of a run, typed, checked and documented once.

The CLI (options/, cli/) builds its flags and YAML keys from these fields; the engine takes the
objects and never reads argv, files or the environment for them.
"""
