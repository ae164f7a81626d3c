"""Packaging for megatron-scir (``pip install -e .[hf,test]``; GPU: ``.[hf,fp8]``)."""

from setuptools import find_packages, setup

setup(
    name="megatron-scir",
    version="0.1.0.dev0",
    description="Self-Consistent Internal Rewards (SCIR) self-rewarding alignment on Megatron-Core",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.12",
    packages=find_packages(include=["megatron_scir", "megatron_scir.*"]),
    package_data={"megatron_scir.config": ["presets/*.yaml"]},
    install_requires=[
        "torch>=2.6",
        "megatron-core>=0.19,<0.20",
        "omegaconf>=2.3",
        "pyyaml",
        "sentencepiece>=0.2",
        "numpy",
        "safetensors",
        "tqdm",
        "psutil",
        "tensorboard",
        "matplotlib",
    ],
    extras_require={
        "hf": ["transformers>=4.51"],
        # data inputs beyond JSONL: Parquet (pyarrow), save_to_disk folders and hf: datasets
        "data": ["datasets>=3", "pyarrow>=15"],
        # trackers next to metrics.jsonl / TensorBoard (logging.wandb, logging.mlflow)
        "wandb": ["wandb>=0.19"],
        "mlflow": ["mlflow-skinny>=2.12"],
        # iteration.lm_eval_tasks: lm-eval-harness on each iteration's HF export
        "lm_eval": ["lm-eval>=0.4.5"],
        "fp8": ["transformer-engine[pytorch]"],
        # generation.engine=vllm (CUDA-only wheels; megatron-scir never imports it on CPU)
        "vllm": ["vllm>=0.10"],
        "test": [
            "pytest>=8",
            "pytest-timeout",
            "ruff",
            "import-linter>=2.1",
            # the real-model tier (tests/real_models): transformers' GGUF loader
            "gguf>=0.10",
            "accelerate>=1.0",
            # the chat-data tests (Parquet, save_to_disk, hf: datasets)
            "datasets>=3",
            "pyarrow>=15",
            # the tracker tests (W&B offline, MLflow's local file store)
            "wandb>=0.19",
            "mlflow-skinny>=2.12",
            "lm-eval>=0.4.5",
        ],
    },
    entry_points={"console_scripts": ["scir=megatron_scir.cli:main"]},
)
