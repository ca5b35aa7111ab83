"""The rollout engine interface (docs/layout.md, contract 2) and the HF-generate engine.

    engine.generate(prompt_token_ids, sampling, allowed=None) -> [Completion(token_ids, logprobs, finish_reason)]
    engine.load_weights(named_tensors, version)
    engine.score(sequences, prompt_lens)     # teacher-forced log-probs: the weight-sync check

`rlhf.rollout.factory.make_engine(cfg, policy, tokenizer)` builds the engine named by
`rollout.name` (hf here; vllm in rlhf.rollout.vllm_engine, imported only when asked for).
After every sync the trainer runs `check_weight_sync` on a fixed probe batch: the engine's
log-probs of fixed sequences must match the trainer's.

Token ids in, token ids out: callers never decode and re-encode generated text to rebuild
a training sequence. `logprobs` are the behaviour policy's per-token log-probabilities
under the *sampling* distribution (after temperature / top-k / top-p), recorded while
generating; the trainer recomputes old log-probs itself and logs the gap as
`rollout/logp_diff_max`.

Constrained decoding (`allowed`): per prompt, the token sequences the answer may spell (each
ending in EOS), or None for free text. The sampling distribution is then the policy's
renormalized over the tokens that continue an allowed sequence, pi_c(a_t | s) ∝ pi(a_t | s) at
those tokens, and each Completion carries those tokens (`allowed`) so the trainer can compute
the same log-probs (rlhf.functional.constrain_logits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from transformers import (LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 32
    stop_strings: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, rollout_cfg) -> "SamplingParams":
        """From the `rollout` config group."""
        return cls(temperature=float(rollout_cfg.temperature), top_p=float(rollout_cfg.top_p),
                   top_k=int(rollout_cfg.top_k), max_new_tokens=int(rollout_cfg.max_new_tokens),
                   stop_strings=tuple(rollout_cfg.stop_strings))


@dataclass
class Completion:
    token_ids: list[int]  # generated ids, cut after the first EOS / stop string (EOS kept)
    logprobs: list[float]  # behaviour log-prob of each generated id
    finish_reason: str  # "stop" (EOS or stop string) or "length"
    allowed: list[list[int] | None] | None = None  # constrained decoding: the allowed ids at each generated position


class Engine:
    version: int = 0

    def generate(self, prompt_token_ids: list[list[int]], sampling: SamplingParams,
                 allowed: list[list[list[int]] | None] | None = None) -> list[Completion]:
        raise NotImplementedError

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        raise NotImplementedError

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """Teacher-forced log pi(token_t | tokens_<t) at temperature 1 of each token after its
        prompt, computed by the engine's copy of the weights (the weight-sync check's probe)."""
        raise NotImplementedError


class _RecordLogprobs(LogitsProcessor):
    """Last processor in the chain: remembers log-softmax of the final (warped) scores so the
    log-prob of each sampled token is known without keeping [B, T, V] score tensors."""

    def __init__(self):
        self.previous: torch.Tensor | None = None
        self.taken: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        self._take(input_ids[:, -1])
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def _take(self, tokens: torch.Tensor) -> None:
        if self.previous is not None:
            self.taken.append(self.previous.gather(1, tokens.unsqueeze(1)).squeeze(1))

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        self._take(last_tokens)
        self.previous = None
        return torch.stack(self.taken, dim=1)


class AllowedSequences(LogitsProcessor):
    """Constrained decoding: row i may only spell one of its allowed token sequences (a prefix
    tree walked from the row's generated ids at every step); other tokens get -inf before the
    sampling warpers, so the sampled distribution is the policy's renormalized over the allowed
    next tokens. Rows without a constraint (None), finished rows and rows off the tree are left
    alone. `steps[i][k]` is the allowed ids at row i's k-th generated token (None: free)."""

    def __init__(self, allowed: list[list[list[int]] | None], width: int):
        self.trees = [None if seqs is None else self.tree(seqs) for seqs in allowed]
        self.width = width  # the left-padded prompt width: generated ids start here
        self.steps: list[list[list[int] | None]] = [[] for _ in allowed]

    @staticmethod
    def tree(sequences: list[list[int]]) -> dict:
        if not sequences:
            raise ValueError("constrained decoding needs at least one allowed sequence per row")
        root: dict = {}
        for seq in sequences:
            node = root
            for t in seq:
                node = node.setdefault(t, {})
        return root

    @staticmethod
    def choices(tree: dict, prefix: list[int]) -> list[int] | None:
        """The ids allowed after spelling `prefix` from the tree's root: the children of the node
        reached; None when `prefix` leaves the tree or ends a sequence (the row is free)."""
        node = tree
        for t in prefix:
            node = node.get(t)
            if node is None:
                return None
        return sorted(node) if node else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        generated = input_ids[:, self.width:].tolist()
        for i, tree in enumerate(self.trees):
            ids = None if tree is None else self.choices(tree, generated[i])
            self.steps[i].append(ids)
            if ids is None:  # free text, finished (past EOS) or off the tree
                continue
            keep = torch.full_like(scores[i], float("-inf"))
            keep[ids] = 0.0
            scores[i] = scores[i] + keep
        return scores


def allowed_along(sequences: list[list[int]], ids: list[int]) -> list[list[int] | None]:
    """The allowed ids at each position of `ids` (a sequence spelled under the constraint of
    `sequences`), exactly as AllowedSequences records them while decoding."""
    tree = AllowedSequences.tree(sequences)
    return [AllowedSequences.choices(tree, ids[:k]) for k in range(len(ids))]


def sampling_processors(sampling: SamplingParams) -> list[LogitsProcessor]:
    processors: list[LogitsProcessor] = []
    if sampling.temperature > 0 and sampling.temperature != 1.0:
        processors.append(TemperatureLogitsWarper(sampling.temperature))
    if sampling.top_k > 0:
        processors.append(TopKLogitsWarper(sampling.top_k))
    if sampling.top_p < 1.0:
        processors.append(TopPLogitsWarper(sampling.top_p))
    return processors


class HFEngine(Engine):
    """Generation with `model.generate` (KV cache, left-padded prompt batches).

    The engine can share the trainer's module (local launcher: no copy, load_weights only
    bumps the version) or own a separate copy that load_weights overwrites."""

    def __init__(self, model: torch.nn.Module, tokenizer, max_batch_size: int = 256,
                 extra_processors: list[LogitsProcessor] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.extra_processors = extra_processors or []
        self.version = 0

    def load_weights(self, named_tensors, version: int) -> None:
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in params:
                    raise KeyError(f"engine model has no parameter '{name}'")
                if params[name] is not tensor:
                    params[name].copy_(tensor)
        self.version = version

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        return score_with_model(self.model, sequences, prompt_lens, self.tokenizer.pad_token_id)

    @torch.no_grad()
    def generate(self, prompt_token_ids, sampling: SamplingParams, allowed=None) -> list[Completion]:
        completions: list[Completion] = []
        for start in range(0, len(prompt_token_ids), self.max_batch_size):
            end = start + self.max_batch_size
            completions += self._generate_batch(prompt_token_ids[start:end], sampling,
                                                None if allowed is None else allowed[start:end])
        return completions

    def _generate_batch(self, prompts: list[list[int]], sampling: SamplingParams, allowed=None) -> list[Completion]:
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention_mask = torch.zeros_like(input_ids)
        for i, p in enumerate(prompts):  # left padding
            input_ids[i, width - len(p):] = torch.tensor(p)
            attention_mask[i, width - len(p):] = 1
        input_ids, attention_mask = input_ids.to(self.model.device), attention_mask.to(self.model.device)
        for processor in self.extra_processors:  # e.g. value guidance needs the prompt padding
            if hasattr(processor, "begin"):
                processor.begin(attention_mask)
        recorder = _RecordLogprobs()
        greedy = sampling.temperature == 0
        constraint = [AllowedSequences(allowed, width)] if allowed is not None and any(a is not None for a in allowed) else []
        processors = LogitsProcessorList(constraint + self.extra_processors + sampling_processors(sampling) + [recorder])
        was_training = self.model.training
        self.model.eval()
        out = self.model.generate(
            input_ids=input_ids, attention_mask=attention_mask, do_sample=not greedy,
            temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=sampling.max_new_tokens,
            logits_processor=processors, eos_token_id=eos, pad_token_id=pad,
            stop_strings=list(sampling.stop_strings) or None,
            tokenizer=self.tokenizer if sampling.stop_strings else None,
            return_dict_in_generate=True, use_cache=True)
        self.model.train(was_training)
        generated = out.sequences[:, width:]
        logprobs = recorder.finish(generated[:, -1])
        completions = [self._cut(generated[i].tolist(), logprobs[i].tolist(), eos, sampling)
                       for i in range(len(prompts))]
        for i, c in enumerate(completions if constraint else ()):
            c.allowed = constraint[0].steps[i][:len(c.token_ids)]
        return completions

    def _cut(self, ids: list[int], logprobs: list[float], eos: int, sampling: SamplingParams) -> Completion:
        if eos in ids:
            end = ids.index(eos) + 1
            return Completion(ids[:end], logprobs[:end], "stop")
        end = self._stop_string_end(ids, sampling.stop_strings)
        if end is not None:
            return Completion(ids[:end], logprobs[:end], "stop")
        return Completion(ids, logprobs, "length")

    def _stop_string_end(self, ids: list[int], stop_strings: tuple[str, ...]) -> int | None:
        """Shortest prefix whose text contains a stop string (HF stops *after* it appears)."""
        if not stop_strings:
            return None
        if not any(s in self.tokenizer.decode(ids) for s in stop_strings):
            return None
        for end in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:end])
            if any(s in text for s in stop_strings):
                return end
        return None



def behaviour_is_policy(engine: Engine | None, policy: torch.nn.Module, sampling: SamplingParams) -> bool:
    """True when the engine's behaviour log-probs are the policy's teacher-forced log-probs at
    the sampling temperature, up to float rounding: an HF engine that shares the policy's module
    (so no sync can lag), samples with a temperature alone (no top-k / top-p / extra processors,
    which would make the sampling distribution differ from pi) and fp32 weights (the cached and
    the teacher-forced pass then agree to ~1e-6 per token; rollout/logp_diff_max keeps measuring it).
    The trainer then takes them as pi_old instead of recomputing (docs/profile.md)."""
    return (isinstance(engine, HFEngine) and engine.model is policy and not engine.extra_processors
            and sampling.temperature > 0 and sampling.top_k == 0 and sampling.top_p >= 1.0
            and all(p.dtype == torch.float32 for p in policy.parameters()))


# --- the checked weight sync (stale or corrupt engine weights otherwise fail silently) ---

def score_with_model(model: torch.nn.Module, sequences: list[list[int]], prompt_lens: list[int],
                     pad_id: int) -> list[list[float]]:
    """Teacher-forced log-probs at temperature 1 of each token after its prompt (right padding)."""
    from agents.models import lm_forward  # agents builds on rlhf: import where used
    from agents.models import pad_right
    from rlhf.functional import token_logprobs

    input_ids, attention_mask = pad_right(sequences, pad_id)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        device = next(model.parameters()).device
        logp = token_logprobs(lm_forward(model, input_ids.to(device), attention_mask.to(device)), input_ids.to(device))
    model.train(was_training)
    return [logp[i, start:len(seq)].tolist() for i, (seq, start) in enumerate(zip(sequences, prompt_lens))]


@dataclass(frozen=True)
class SyncProbe:
    """A fixed batch the engine and the trainer both score after every weight sync."""
    sequences: list[list[int]]  # prompt + continuation ids
    prompt_lens: list[int]


def build_sync_probe(engine: Engine, prompts: list[list[int]], max_new_tokens: int = 16) -> SyncProbe:
    """Each prompt with the engine's greedy continuation (likely tokens) and with the next
    prompt's continuation (unlikely tokens, where stale weights show most): fixed for the run."""
    greedy = engine.generate(prompts, SamplingParams(temperature=0.0, max_new_tokens=max_new_tokens))
    continuations = [c.token_ids or [0] for c in greedy]
    shifted = continuations[1:] + continuations[:1]
    sequences = [p + c for p, c in zip(prompts, continuations)] + [p + c for p, c in zip(prompts, shifted)]
    return SyncProbe(sequences, [len(p) for p in prompts] * 2)


class WeightSyncError(RuntimeError):
    """The engine's log-probs disagree with the trainer's after a weight sync."""


def check_weight_sync(engine: Engine, policy: torch.nn.Module, probe: SyncProbe, pad_id: int,
                      threshold: float | None) -> float:
    """Max per-token |log-prob gap| between engine and trainer on the probe; raises when it
    exceeds `threshold` (None or 0: measure only)."""
    engine_logp = engine.score(probe.sequences, probe.prompt_lens)
    trainer_logp = score_with_model(policy, probe.sequences, probe.prompt_lens, pad_id)
    gap = max(abs(a - b) for row_e, row_t in zip(engine_logp, trainer_logp) for a, b in zip(row_e, row_t))
    if threshold and gap > threshold:
        raise WeightSyncError(
            f"weight sync check failed at policy version {engine.version}: the engine's log-probs differ from the "
            f"trainer's by up to {gap:.3g} on the probe batch (rollout.sync_check_threshold={threshold}). The engine "
            "is generating with stale or corrupt weights: a skipped or partial sync, tied embeddings synced without "
            "lm_head.weight, or a prefix cache not reset. Set rollout.sync_check_threshold=null to only log the gap.")
    return gap
