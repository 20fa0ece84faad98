"""On-disk formats: video (`vqtok.io.video`, the only PyAV user), index files and their sidecar
(`vqtok.io.tokens`), model directories (`vqtok.io.checkpoint`), remap files
(`vqtok.io.remap`), token datasets' Parquet shards and manifest (`vqtok.io.shards`; they are
read back by `vqtok.data`) and Hub downloads (`vqtok.io.hub`).
"""
