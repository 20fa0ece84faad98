"""Tokenizer families: one module per ``config.json`` "family" (`vqtok.families.vqtok`,
`vqtok.families.cosmos`, `vqtok.families.magvit2`), their layers, and the registry they share
(`vqtok.families.base`).
"""
