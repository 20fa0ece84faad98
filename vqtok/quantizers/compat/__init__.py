"""The reference projects' quantizer call signatures (taming-transformers, Open-MAGVIT2, FSQ,
HeliaVQ...) over vqtok's own quantizers: one module per reference.
"""
