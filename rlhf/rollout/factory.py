"""The engine factory: every part that generates text gets its engine here, so the `rollout`
config group (hf | vllm) applies to all of them. Kept apart from the engine classes so that
rlhf.rollout.engine and rlhf.rollout.vllm_engine do not import each other."""
from __future__ import annotations

from collections.abc import Sequence

import torch

from rlhf.rollout.engine import Engine, HFEngine

ENGINES = ("hf", "vllm")


def make_engine(cfg, policy: torch.nn.Module, tokenizer, model_dir: str | None = None,
                processors: Sequence = ()) -> Engine:
    """The engine of the `rollout` config group, holding the policy's current weights.

    hf: shares the trainer's module (syncs are free). vllm: an in-process vLLM started from
    `model_dir` (default: the directory the policy was loaded from), vLLM imported lazily.
    `processors`: extra logits processors (a decoding mode such as value guidance), which
    only the HF engine can apply."""
    rollout = cfg.rollout
    if rollout.name == "hf":
        return HFEngine(policy, tokenizer, int(rollout.max_batch_size), extra_processors=list(processors))
    if processors:
        raise ValueError(f"rollout={rollout.name} cannot apply logits processors (a decoding mode such as "
                         "decoding=vas); valid choice with them: rollout=hf")
    if rollout.name == "vllm":
        from rlhf.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine(model_dir or policy.config._name_or_path, max_batch_size=int(rollout.max_batch_size),
                            max_model_len=int(policy.config.max_position_embeddings), seed=int(cfg.seed),
                            device=str(cfg.device), kv_cache_gib=float(rollout.kv_cache_gib),
                            gpu_memory_utilization=float(rollout.gpu_memory_utilization),
                            enforce_eager=bool(rollout.enforce_eager), seeded_requests=bool(rollout.seeded_requests))
        engine.load_weights(policy.named_parameters(), version=0)  # the policy may differ from its directory
        return engine
    raise ValueError(f"rollout.name={rollout.name!r} is not an engine; valid choices: hf, vllm")
