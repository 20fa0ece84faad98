"""On-disk formats: video (`vqtok.io.video`, the only PyAV user), index files and their sidecar
(`vqtok.io.tokens`), model directories (`vqtok.io.checkpoint`), remap files
(`vqtok.io.usedsets`), token datasets (`vqtok.io.shards`, `vqtok.io.datasets`) and Hub downloads
(`vqtok.io.hub`).
"""
