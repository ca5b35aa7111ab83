"""Preference data for the DPO family, DNO and MCTS-DPO: ranked lists of responses per prompt.

One record type covers pairs and lists: a `RankedList` holds a prompt, K >= 2 responses
(token ids, exactly as generated or tokenized once) and a score per response (higher is
better). A pair is a list of two with scores (1, 0).

Sources:
  * an environment: K samples per train prompt from the SFT policy, scored by the env's
    gold scorer (`lists_from_env`, cached like the reward models' pairs);
  * a local JSONL file (`load_jsonl`), one object per line, either
        {"prompt": "...", "chosen": "...", "rejected": "..."}
    or  {"prompt": "...", "responses": ["...", "...", ...], "scores": [0.3, 0.9, ...]}
    Prompt and response are tokenized separately, as rollouts do, and the response text is
    appended as given (start it with the space that follows the prompt, as the text env's
    demonstrations do). A bad row raises ValueError naming the file, the 1-based line number
    and the reason; nothing is trained on a file with a bad row.

Pair construction: `best_vs_worst` (one pair per list) and `curriculum_stages` (Curry-DPO:
pairs (R_1, R_j) ordered easy to hard by score gap).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch

PAIR_KEYS = ("prompt", "chosen", "rejected")
LIST_KEYS = ("prompt", "responses", "scores")


@dataclass
class RankedList:
    prompt_ids: list[int]
    responses: list[list[int]]  # response token ids (the tokens that carry the loss)
    scores: list[float]  # one per response, higher is better
    texts: list[str] | None = None  # decoded responses (for dedup and logs), when known
    masks: list[list[int]] | None = None  # multi-turn: per response token, 1 if the policy generated it, 0 on the
    #                                        env's observation tokens between turns (None: all generated)
    allowed: list[list[list[int] | None]] | None = None  # constrained decoding: per response, the allowed ids of
    #                                                      each token (None: free; the whole field None: no constraint)

    def order(self) -> list[int]:
        """Indices best first; ties keep their original order (deterministic)."""
        return sorted(range(len(self.scores)), key=lambda i: (-self.scores[i], i))


@dataclass
class Pair:
    prompt_ids: list[int]
    chosen: list[int]
    rejected: list[int]
    gap: float = 1.0  # score difference (Curry-DPO's difficulty: larger is easier)


# --- JSONL ----------------------------------------------------------------------------------

def _row_error(path: Path, line: int, reason: str) -> ValueError:
    return ValueError(f"{path}:{line}: {reason}")


def _check_row(row, path: Path, line: int) -> tuple[str, list[str], list[float]]:
    if not isinstance(row, dict):
        raise _row_error(path, line, f"expected a JSON object, got {type(row).__name__}")
    is_pair, is_list = "chosen" in row or "rejected" in row, "responses" in row or "scores" in row
    if is_pair == is_list:
        raise _row_error(path, line, f"a row has either the keys {PAIR_KEYS} or the keys {LIST_KEYS}; "
                                     f"got {sorted(row)}")
    needed = PAIR_KEYS if is_pair else LIST_KEYS
    missing = [k for k in needed if k not in row]
    if missing:
        raise _row_error(path, line, f"missing key(s) {missing}; a row needs {needed}")
    extra = sorted(set(row) - set(needed))
    if extra:
        raise _row_error(path, line, f"unknown key(s) {extra}; valid keys: {needed}")
    prompt = row["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise _row_error(path, line, "'prompt' must be a non-empty string")
    if is_pair:
        responses, scores = [row["chosen"], row["rejected"]], [1.0, 0.0]
        if responses[0] == responses[1]:
            raise _row_error(path, line, "'chosen' and 'rejected' are identical: the pair carries no preference")
    else:
        responses, scores = row["responses"], row["scores"]
        if not isinstance(responses, list) or not isinstance(scores, list) or len(responses) != len(scores):
            raise _row_error(path, line, "'responses' and 'scores' must be lists of the same length")
        if len(responses) < 2:
            raise _row_error(path, line, f"a list needs at least 2 responses, got {len(responses)}")
        if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
            raise _row_error(path, line, f"'scores' must be numbers, got {scores}")
    for i, text in enumerate(responses):
        if not isinstance(text, str) or not text.strip():
            raise _row_error(path, line, f"response {i} must be a non-empty string")
    return prompt, responses, [float(s) for s in scores]


def load_jsonl(path: str | Path, tokenizer) -> list[RankedList]:
    """Read and tokenize a preference file (schema in the module docstring). Responses end
    with the tokenizer's EOS so the policy learns to stop as it does when sampling."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"preference file {path} does not exist")
    records = []
    for line_no, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise _row_error(path, line_no, f"not valid JSON ({err.msg})") from None
        prompt, responses, scores = _check_row(row, path, line_no)
        encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
        records.append(RankedList(encode(prompt), [encode(r) + [tokenizer.eos_token_id] for r in responses],
                                  scores, texts=list(responses)))
    if not records:
        raise ValueError(f"{path}: no rows")
    return records


# --- from an environment --------------------------------------------------------------------

def sample_lists(runner, make_env, seeds: list[int], k: int, score, log=print, chunk: int = 64) -> list[RankedList]:
    """K samples for each prompt seed with `runner`; `score(episode) -> float`."""
    lists, start = [], time.time()
    for begin in range(0, len(seeds), chunk):
        part = seeds[begin:begin + chunk]
        repeated = [s for s in part for _ in range(k)]
        episodes = runner.run([make_env() for _ in repeated], repeated)
        for i in range(len(part)):
            group = episodes[i * k:(i + 1) * k]
            masks = [ep.action_mask[ep.prompt_len:] for ep in group]
            allowed = [ep.allowed[ep.prompt_len:] if ep.allowed is not None else None for ep in group]
            lists.append(RankedList(group[0].token_ids[:group[0].prompt_len],
                                    [ep.token_ids[ep.prompt_len:] for ep in group],
                                    [float(score(ep)) for ep in group], [ep.action_texts[-1] for ep in group],
                                    masks if any(0 in m for m in masks) else None,
                                    allowed if any(a is not None for a in allowed) else None))
        log(f"[prefs] sampled {len(lists)}/{len(seeds)} prompts x {k} ({time.time() - start:.0f}s)")
    return lists


def to_json(lists: list[RankedList]) -> list[dict]:
    return [vars(r) for r in lists]


def from_json(rows: list[dict]) -> list[RankedList]:
    return [RankedList(**r) for r in rows]


# --- pairs ------------------------------------------------------------------------------------

def best_vs_worst(lists: list[RankedList]) -> list[Pair]:
    """One pair per list: its best against its worst response; lists whose scores are all
    equal give no pair."""
    pairs = []
    for r in lists:
        order = r.order()
        best, worst = order[0], order[-1]
        if r.scores[best] > r.scores[worst] and r.responses[best] != r.responses[worst]:
            pairs.append(Pair(r.prompt_ids, r.responses[best], r.responses[worst], r.scores[best] - r.scores[worst]))
    return pairs


def curriculum_stages(lists: list[RankedList]) -> list[list[Pair]]:
    """Curry-DPO (Pattnaik et al. 2024): for a list sorted R_1 >= ... >= R_K the pairs
    (R_1, R_K), (R_1, R_{K-1}), ..., (R_1, R_2); stage s holds each prompt's s-th easiest
    pair (easiest = largest score gap). Pairs with equal scores are dropped; within a stage
    pairs are ordered by gap, ties by prompt position (deterministic)."""
    k = max(len(r.responses) for r in lists)
    stages: list[list[tuple[float, int, Pair]]] = [[] for _ in range(k - 1)]
    for index, r in enumerate(lists):
        order = r.order()
        best = order[0]
        for stage, j in enumerate(reversed(order[1:])):
            gap = r.scores[best] - r.scores[j]
            if gap > 0 and r.responses[best] != r.responses[j]:
                stages[stage].append((-gap, index, Pair(r.prompt_ids, r.responses[best], r.responses[j], gap)))
    return [[p for _, _, p in sorted(stage, key=lambda e: (e[0], e[1]))] for stage in stages if stage]


# --- tensors ----------------------------------------------------------------------------------

def collate_sequences(prompts: list[list[int]], responses: list[list[int]], pad_id: int,
                      masks: list[list[int] | None] | None = None):
    """Right-padded prompt+response: (input_ids, attention_mask, response_mask) [N, L]; the
    response mask marks the positions of response tokens (aligned like token_logprobs), or of
    the generated ones among them where a multi-turn response has a mask (observations: 0)."""
    width = max(len(p) + len(r) for p, r in zip(prompts, responses))
    n = len(prompts)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response_mask = torch.zeros((n, width), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        input_ids[i, :len(p) + len(r)] = torch.tensor(p + r)
        attention[i, :len(p) + len(r)] = 1
        mask = masks[i] if masks is not None and masks[i] is not None else [1] * len(r)
        response_mask[i, len(p):len(p) + len(r)] = torch.tensor(mask, dtype=torch.float32)
    return input_ids, attention, response_mask
