"""Pretraining: the run config (config.py), checkpoints, the loop (engine.py), plots and the CLI.

Importing this package is light: torch and the model are imported by the modules that need them.
"""
