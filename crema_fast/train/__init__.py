"""Pretraining: the run config (config.py), checkpoints, the loop (engine.py) and plots. It trains on a
store; the command (crema_fast/commands/pretrain.py) parses arguments and turns ``--data`` into a store.

Importing this package is light: torch and the model are imported by the modules that need them.
"""
