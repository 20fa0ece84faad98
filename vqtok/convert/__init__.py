"""Converters from public checkpoints to vqtok model directories (the only pickle / TorchScript
readers): one module per source format, and what they share (`vqtok.convert.common`).
"""
