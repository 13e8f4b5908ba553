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
    # Compatible ranges (the APIs the code uses), so hpt-hpc installs beside a site's own
    # torch/CUDA stack. The exact versions CI tests are in constraints.txt (`make` uses it).
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "submitit>=1.5,<2",
        "mlflow[auth]>=3.5,<4",  # auth: `hpt-hpc mlflow serve --auth`
        "psutil>=5.9",
        "click>=8.1,<9",
        "pyyaml>=6",
        "numpy>=1.26",
        "pillow>=10",
        "tifffile>=2023.1",  # multi-band TIFF (data.channels other than 1 or 3)
        "matplotlib>=3.8",
        "scikit-learn>=1.4",
        "mlxtend>=0.23",
        "timm>=1.0",  # model.arch timm:<name>; weights by name (init: timm:, hf-hub:)
        "safetensors>=0.4",
        "huggingface-hub>=0.24",  # the shared weights cache (HF_HOME), offline loading
        "webdataset>=1.0",  # format: shards on the torchvision backend (tar streams)
    ],
    extras_require={
        # NVIDIA DALI for the CUDA major version of the site's driver (data.backend: dali;
        # without it the torchvision backend runs, with one warning)
        "dali-cuda12": ["nvidia-dali-cuda120>=1.40"],
        "dali-cuda13": ["nvidia-dali-cuda130>=2.0"],
        "lora": ["peft>=0.12"],  # LoRA adapters on the frozen part of a backbone
        "test": ["pytest>=8", "playwright>=1.45"],
    },
    entry_points={"console_scripts": ["hpt-hpc=hpt_hpc.cli.main:cli"]},
)
