"""Value-guided step beam search (OREO, Wang et al. 2024, section 4.4): test-time search over
reasoning steps with a value model, for any policy.

    beams <- [prompt]                                       (per problem, all problems batched)
    repeat up to max_steps:
        sample B next steps for each beam (temperature, stop at the step delimiter)  -> <= B^2
        deduplicate identical candidates
        finished candidates (EOS) -> the answer pool; the rest: keep the B best by V
        stop when no unfinished candidate is left
    answer <- the pool member with the highest V  (unfinished beams join the pool at the cap)

Ties break by the policy's log-probability of the whole response. V(text) is the value model's
head at the last token of the text; a finished candidate is valued without its EOS, i.e. at
the state whose action is EOS -- the last state OREO trains (the fully terminated state is
never a training state). B = 1 is "sample one step, keep it": plain sampling.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import torch

from agents.models import pad_right
from rlhf.rollout.engine import Engine, SamplingParams


@dataclass
class Candidate:
    response: list[int]  # generated ids so far (EOS kept when finished)
    logp: float  # sum of the policy's log-probs of the response
    value: float = 0.0
    finished: bool = False


@torch.no_grad()
def values_of(value_model, sequences: list[list[int]], pad_id: int, chunk: int = 512) -> list[float]:
    """V(text) at the last token of each sequence."""
    out = []
    for begin in range(0, len(sequences), chunk):
        ids, mask = pad_right(sequences[begin:begin + chunk], pad_id)
        out += value_model.score(ids, mask).tolist()
    return out


def cut_at_step(tokenizer, ids: list[int], logps: list[float], splitter) -> tuple[list[int], list[float]]:
    """Cut a sampled continuation after the token that completes the first step delimiter."""
    for end in range(1, len(ids) + 1):
        if splitter.count(tokenizer.decode(ids[:end])) > 0:
            return ids[:end], logps[:end]
    return ids, logps


def value_beam_search(engine: Engine, tokenizer, value_model, prompts: list[list[int]], splitter, beams: int,
                      max_steps: int = 20, max_step_tokens: int = 16, temperature: float = 1.0,
                      max_total_tokens: int | None = None) -> tuple[list[Candidate], dict[str, float]]:
    """The chosen response of each prompt, and search statistics."""
    start, eos, pad = time.time(), tokenizer.eos_token_id, tokenizer.pad_token_id
    sampling = SamplingParams(temperature=temperature, max_new_tokens=max_step_tokens,
                              stop_strings=splitter.stop_strings)
    frontier = [[Candidate([], 0.0)] for _ in prompts]
    pools: list[list[Candidate]] = [[] for _ in prompts]
    generated, expanded = 0, 0
    for _ in range(max_steps):
        requests = [(p, c) for p, beam in enumerate(frontier) for c in beam for _ in range(beams)]
        if not requests:
            break
        completions = engine.generate([prompts[p] + c.response for p, c in requests], sampling)
        fresh: list[dict[tuple, Candidate]] = [{} for _ in prompts]
        for (p, parent), completion in zip(requests, completions):
            ids, logps = cut_at_step(tokenizer, completion.token_ids, completion.logprobs, splitter)
            generated += len(ids)
            response = parent.response + ids
            finished = bool(ids) and ids[-1] == eos
            too_long = max_total_tokens is not None and len(prompts[p]) + len(response) >= max_total_tokens
            candidate = Candidate(response, parent.logp + sum(logps), finished=finished or too_long or not ids)
            fresh[p].setdefault(tuple(response), candidate)  # deduplicate identical candidates
        flat = [(p, c) for p in range(len(prompts)) for c in fresh[p].values()]
        expanded += len(flat)
        scored = values_of(value_model, [prompts[p] + (c.response[:-1] if c.finished and c.response[-1:] == [eos]
                                                       else c.response) for p, c in flat], pad)
        for (p, c), v in zip(flat, scored):
            c.value = v
        frontier = []
        for p in range(len(prompts)):
            open_ = [c for c in fresh[p].values() if not c.finished]
            pools[p] += [c for c in fresh[p].values() if c.finished]
            frontier.append(sorted(open_, key=lambda c: (-c.value, -c.logp))[:beams])
    for p, beam in enumerate(frontier):  # the step cap: unfinished beams compete too
        pools[p] += beam
    chosen = [max(pool, key=lambda c: (c.value, c.logp)) if pool else Candidate([], 0.0) for pool in pools]
    stats = {"search/tokens_generated": float(generated), "search/candidates": float(expanded),
             "search/candidates_per_problem": expanded / max(len(prompts), 1),
             "timing_s/search": time.time() - start}
    return chosen, stats


class ValueBestOf(Engine):
    """OREO's test-time search on ALFWorld (Wang et al. 2024, section 4.4): at every turn sample K
    answers and act on the one of highest V(s.a), the value at the answer's last token before
    its EOS (the convention of value_beam_search above). Wraps an engine, so the multi-turn runner
    plays episodes with it unchanged; constrained decoding passes through. Identical candidates
    are valued once; ties break by the policy's log-probability. K = 1 is plain sampling at
    `temperature`. `python -m rlhf.evaluate run=<oreo run> decoding=value_best_of decoding.k=5`."""

    def __init__(self, engine: Engine, value_model, pad_id: int, eos_id: int, k: int, temperature: float = 1.0):
        if int(k) < 1:
            raise ValueError(f"decoding.k={k}: the number of sampled answers per turn must be >= 1")
        self.engine, self.value_model, self.pad, self.eos = engine, value_model, pad_id, eos_id
        self.k, self.temperature = int(k), float(temperature)
        self.turns, self.distinct = 0, 0  # answers chosen, distinct candidates valued

    def generate(self, prompt_token_ids, sampling: SamplingParams, allowed=None):
        k = self.k
        candidates = replace(sampling, temperature=self.temperature)
        repeated = [p for p in prompt_token_ids for _ in range(k)]
        extra = {} if allowed is None else {"allowed": [a for a in allowed for _ in range(k)]}
        completions = self.engine.generate(repeated, candidates, **extra)
        chosen = []
        for i, prompt in enumerate(prompt_token_ids):
            unique = {}
            for c in completions[i * k:(i + 1) * k]:
                unique.setdefault(tuple(c.token_ids), c)
            ids = [list(t[:-1]) if t[-1:] == (self.eos,) else list(t) for t in unique]
            # one forward per prompt: its candidates have about its length (a batch over prompts pads
            # every row to the longest episode: slower, measured)
            values = values_of(self.value_model, [prompt + a for a in ids], self.pad)
            best = max(zip(values, unique.values()), key=lambda vc: (vc[0], sum(vc[1].logprobs)))
            chosen.append(best[1])
            self.turns, self.distinct = self.turns + 1, self.distinct + len(unique)
        return chosen
