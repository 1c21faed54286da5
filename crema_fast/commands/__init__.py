"""Subcommands of the crema-fast CLI: each has add_arguments(parser) and run(args)."""
