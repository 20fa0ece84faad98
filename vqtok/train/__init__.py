"""Training a `vqtok` tokenizer: the loop (`vqtok.train.loop`), its config, checkpointed state,
evaluation, footage sampling and data-dependent initialisation.
"""
