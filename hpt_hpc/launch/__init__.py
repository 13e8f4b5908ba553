"""Launching stages with submitit: SLURM arrays and chains, local and debug executors."""
