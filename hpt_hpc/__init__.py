"""hpt-hpc: Hierarchical PreTraining (MoCo-v2 in stages) for SLURM clusters."""
__version__ = "0.1.0"
