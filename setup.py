"""hpt-hpc: Hierarchical PreTraining (staged MoCo-v2) as a SLURM batch toolkit."""
import re
from pathlib import Path

from setuptools import find_packages, setup

VERSION = re.search(r'__version__ = "([^"]+)"',
                    Path(__file__).with_name("hpt_hpc").joinpath("__init__.py").read_text())[1]

setup(
    name="hpt-hpc",
    version=VERSION,
    description="Hierarchical PreTraining (MoCo-v2 in stages) on SLURM clusters",
    long_description=Path(__file__).with_name("README.md").read_text(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["hpt_hpc", "hpt_hpc.*"]),
    package_data={"hpt_hpc": ["resources/*.yaml", "resources/**/*.yaml", "resources/experiments/*.yaml"]},
    python_requires=">=3.10",
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "nvidia-dali-cuda130==2.4.0",
        "submitit==1.5.4",
        "mlflow==3.17.2",
        "psutil==7.2.2",
        "click==8.5.1",
        "pyyaml==6.0.4",
        "numpy==2.4.6",
        "pillow==13.0.0",
        "matplotlib==3.11.2",
        "scikit-learn==1.9.1",
        "mlxtend==0.25.0",
    ],
    extras_require={"test": ["pytest==9.2.0", "playwright==1.65.2"]},
    entry_points={"console_scripts": ["hpt-hpc=hpt_hpc.cli.main:cli"]},
)
