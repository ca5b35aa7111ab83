"""Policies without a model hub: a locally trained tokenizer and an SFT warm start.

`model=tiny` builds the tokenizer (byte-level BPE trained on the environment's own corpus)
and a Qwen2-shaped model from config, then trains it on the environment's demonstrations.
The result is cached by a hash of everything that determines it (rlhf.cache), so the
second run with the same settings starts in a second. `model.path=<dir>` skips all of this
and loads a local HF model instead.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from agents.models import build_tiny_lm, lm_forward, pad_right, save_lm
from rlhf.cache import cached, source_digest
from rlhf.config import ConfigError
from rlhf.functional import masked_mean, token_logprobs

PAD, EOS = "<|pad|>", "<|endoftext|>"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE: any string encodes (no unknown token), trained in ~0.1 s."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=PAD)
    fast.padding_side = "left"
    return fast


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """(prompt ids, response ids + EOS), each encoded on its own exactly as rollouts do."""
    eos = tokenizer.eos_token_id
    prompts = tokenizer([p for p, _ in pairs], add_special_tokens=False)["input_ids"]
    responses = tokenizer([r for _, r in pairs], add_special_tokens=False)["input_ids"]
    return [(p, r + [eos]) for p, r in zip(prompts, responses)]


def encode_turns(tokenizer, demos: list[list[tuple[str, bool]]]) -> list[tuple[list[int], list[bool]]]:
    """Multi-turn demonstrations, each a list of (text, is_action) pieces -> (ids, trains per
    token). Every piece is encoded on its own, as the multi-turn runner lays out an episode
    (observation tokens appended, each action's tokens followed by EOS); only action tokens and
    their EOS are trained."""
    eos, out = tokenizer.eos_token_id, []
    for pieces in demos:
        ids, trains = [], []
        for text, is_action in pieces:
            piece = tokenizer(text, add_special_tokens=False)["input_ids"] + ([eos] if is_action else [])
            ids += piece
            trains += [is_action] * len(piece)
        out.append((ids, trains))
    return out


def sft_train(model, tokenizer, pairs: list[tuple[str, str]] | None, sft_cfg, seed: int,
              log=print, turns: list[list[tuple[str, bool]]] | None = None) -> dict[str, float]:
    """Next-token cross-entropy on prompt+response (a from-scratch model must learn the
    language of the prompts too), AdamW with linear warmup and cosine decay. With `turns`
    (multi-turn demonstrations, encode_turns) instead of pairs, only the actions are trained."""
    data = ([(p + r, [True] * len(p + r)) for p, r in encode_pairs(tokenizer, pairs)] if turns is None
            else encode_turns(tokenizer, turns))
    rng = random.Random(seed)
    batch_size = int(sft_cfg.batch_size)
    steps = int(sft_cfg.epochs) * math.ceil(len(data) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(sft_cfg.lr), weight_decay=0.01)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    step, start, loss_value = 0, time.time(), float("nan")
    for epoch in range(int(sft_cfg.epochs)):
        order = list(range(len(data)))
        rng.shuffle(order)
        for begin in range(0, len(order), batch_size):
            chunk = [data[i] for i in order[begin:begin + batch_size]]
            ids, mask = pad_right([x for x, _ in chunk], tokenizer.pad_token_id)
            logp = token_logprobs(lm_forward(model, ids, mask), ids)
            target_mask = mask * pad_right([[int(t) for t in trains] for _, trains in chunk], 0)[0]
            target_mask[:, 0] = 0
            loss = -masked_mean(logp, target_mask)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            step += 1
            loss_value = loss.item()
            if step % 100 == 0 or step == steps:
                log(f"[sft] step {step}/{steps} epoch {epoch + 1} loss {loss_value:.3f} "
                    f"({time.time() - start:.0f}s)")
    model.eval()
    return {"sft/loss": loss_value, "sft/steps": step}


def sft_settings(cfg):
    """model.sft with the env's own SFT budget on top (`env.sft`, where an env sets one: the
    arithmetic chains of env=math need ~4x the steps of the review task before a tiny model
    learns to copy operands, measured)."""
    env_sft = cfg.env.get("sft")
    return OmegaConf.merge(cfg.model.sft, env_sft) if env_sft else cfg.model.sft


def warm_start_policy(cfg, env, log=print) -> Path:
    """Directory of the policy every run starts from (and the frozen reference)."""
    if cfg.model.path:
        path = Path(str(cfg.model.path)).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"model.path={path} does not exist or is not a directory")
        return path
    sft = sft_settings(cfg)
    loss_on = str(sft.get("loss_on", "all"))
    valid = ("all", "actions") if hasattr(env, "demonstration_turns") else ("all",)  # actions: multi-turn envs
    if loss_on not in valid:
        raise ConfigError(f"sft loss_on={loss_on!r} (env.sft.loss_on or model.sft.loss_on); valid choices for "
                          f"env={env.name}: {', '.join(valid)}")
    spec = {"model": OmegaConf.merge(OmegaConf.to_container(cfg.model, resolve=True), {"sft": sft}), "env": env.fingerprint(), "seed": int(sft.seed),
            "sources": source_digest(["rlhf.warmstart", "agents.models", "envs.text", "envs.base"])}

    def build(out: Path) -> None:
        torch.manual_seed(int(sft.seed))
        tok_cfg = cfg.model.tokenizer
        tokenizer = train_tokenizer(env.corpus(int(tok_cfg.corpus_size), seed=1),
                                    int(tok_cfg.vocab_size))
        model = build_tiny_lm(cfg.model, tokenizer)
        if loss_on == "actions":
            sft_train(model, tokenizer, None, sft, int(sft.seed), log,
                      turns=env.demonstration_turns(int(sft.demonstrations), seed=int(sft.seed)))
        else:
            sft_train(model, tokenizer, env.demonstrations(int(sft.demonstrations), seed=int(sft.seed)), sft,
                      int(sft.seed), log)
        save_lm(model, tokenizer, out)

    return cached(cfg.cache_dir, "sft", spec, build, log)

