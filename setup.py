"""Install with `pip install torch==2.13.0 && pip install -e .[test]` (see README).

torch is installed first on purpose: a bare `torch` requirement resolved by pip pulls the newest
CUDA build (several GB); with a torch already present the requirement below installs nothing.
"""

from setuptools import find_packages, setup

setup(
    name="megatron-codistill",
    version="0.1.0",
    description="CoDistill-GRPO: co-train a large and a small language model with Megatron-Core",
    python_requires=">=3.10",
    packages=find_packages(include=["megatron_codistill", "megatron_codistill.*"]),
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16.1",
        "transformers>=4.45",
        "tokenizers",
        "safetensors",
        "datasets",
        "math-verify[antlr4_13_2]>=0.7",
        "pyyaml",
        "numpy",
        "tqdm",
        "tensorboard",
        "matplotlib",
        "scipy",  # t quantiles of `codistill sweep`
        "einops",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis", "ruff", "scipy", "trl>=1.16,<2"],
        # GPU clusters only; never needed on CPU. Versions follow the Megatron-Core release in use.
        "gpu": ["transformer-engine[pytorch]", "sglang[all]"],
        "wandb": ["wandb"],
    },
    entry_points={"console_scripts": ["codistill=megatron_codistill.cli:main"]},
)
