"""File-level jobs, what the command line runs: plan the inputs (`vqtok.pipeline.plan`), encode
and decode files (`vqtok.pipeline.encode`, `vqtok.pipeline.batching`), reconstruct, build remap
files, pack token datasets, describe files. They report progress through callbacks and never
print.
"""
