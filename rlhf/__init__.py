"""rlhf: reinforcement learning with language models, from a laptop CPU to GPU clusters.

Entry points: `python -m rlhf.train`, `python -m rlhf.evaluate`.
"""
import os

# No model hub on the machines this runs on: never try to reach one.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Per-load progress bars ("Loading weights") and advisory logs drown the training progress
# line. Set through the environment, so that importing rlhf does not import transformers
# (seconds): `python -m rlhf.evaluate --help` answers at once.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
