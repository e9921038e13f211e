"""The d2lseg command: flags, what each subcommand does, predict on files, doctor, launch (the command layer:
docs/architecture.md)."""
