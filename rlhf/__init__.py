"""rlhf: reinforcement learning with language models, from a laptop CPU to GPU clusters.

Entry points: `python -m rlhf.train`, `python -m rlhf.evaluate`.
"""
import os

# No model hub on the machines this runs on: never try to reach one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")


def _quiet_transformers() -> None:
    """Per-load progress bars ("Loading weights") drown the training progress line."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


_quiet_transformers()
