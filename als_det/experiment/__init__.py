"""Experiments: a plan file -> a graph of stages (each a `tools/` entry point) -> run here or on
SLURM."""
