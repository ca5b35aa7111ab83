"""Throughput benchmark: our engines and trainers against the raw engines and against TRL.

    python -m rlhf.bench                 # full run (~5-10 min on 2 CPU cores); JSON + table
    python -m rlhf.bench --quick         # a smoke run (~2 min): smaller model warm start, batch, lengths
    python -m rlhf.bench --device cuda   # the same measurements on a GPU
    python -m rlhf.bench --skip trl,vllm rollout.max_new_tokens=64   # drop parts; Hydra overrides last
    python -m rlhf.bench --sizes tiny,4m,30m --skip vllm,rollout threads=1   # size axis (4m took 11 min at load 8; 30m far longer)

(a) rollout: tokens/s of our HF engine vs raw `model.generate`, and of our vLLM engine vs raw
    `vllm.LLM.generate` on the same LLM instance, same prompts, lengths and sampling
    (temperature 1, per-token logprobs requested from both vLLM paths); overhead = raw/ours - 1.
(b) training: seconds per phase (rollout + reward + update + sync) of our PPO (with its separate
    critic, and ppo_shared: the value head on the policy's trunk, algo.shared_trunk) and P3O, and of
    TRL's GRPOTrainer at the same model, prompts per phase, group size (2), lengths, learning
    rate, KL coefficient, and optimizer steps per phase on minibatches of the same size: PPO's
    epochs x minibatches (P3O's pair minibatches are set to match), and, in a second column,
    one optimizer step per phase, where phase time / generation time shows the framework's
    overhead over sampling. Rewards: the env's gold scorer for all (no reward network).
(d) sizes (--sizes): (b) for Qwen2 shapes of ~0.2M (tiny), ~4M and ~30M parameters.
(c) memory: peak RSS *increase* over the process's RSS when each measurement starts (sampled
    every 5 ms; weights loaded before are not counted), plus torch's peak on CUDA.

The VMs drift 30-50% in speed within minutes, so measurements are interleaved round by round
in one process (TRL's phases alternate with ours through a trainer callback) and the ratios
are per round, then the median is reported.
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

QUICK = ["model.sft.demonstrations=2000", "model.sft.epochs=1", "train.prompts_per_step=16",
         "rollout.max_new_tokens=24"]


# --- memory ------------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak RSS increase (and CUDA peak) during the `with` blocks it measures, over all uses."""

    def __init__(self):
        self.peak_rss_delta = 0
        self.peak_cuda = 0

    @contextmanager
    def measure(self):
        start, peak, done = rss_bytes(), [rss_bytes()], threading.Event()

        def sample():
            while not done.wait(0.005):
                peak[0] = max(peak[0], rss_bytes())

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        try:
            yield
        finally:
            done.set()
            sampler.join()
            self.peak_rss_delta = max(self.peak_rss_delta, max(peak[0], rss_bytes()) - start)
            if torch.cuda.is_available():
                self.peak_cuda = max(self.peak_cuda, torch.cuda.max_memory_allocated())

    def as_dict(self) -> dict[str, float]:
        out = {"peak_rss_increase_mib": self.peak_rss_delta / 2**20}
        if torch.cuda.is_available():
            out["peak_cuda_allocated_mib"] = self.peak_cuda / 2**20
        return out


class Meter:
    """Times and token counts of one benchmarked method, with its memory peak."""

    def __init__(self, name: str):
        self.name, self.seconds, self.units, self.memory = name, [], [], PeakMemory()

    @contextmanager
    def run(self):
        with self.memory.measure():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            yield
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.seconds.append(time.perf_counter() - start)


def median_ratio(numerators: list[float], denominators: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(numerators, denominators))


# --- (a) rollout -------------------------------------------------------------------------------
def raw_hf_generate(model, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> int:
    """Plain `model.generate` sampling at temperature 1; returns the generated token count."""
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device), do_sample=True,
                         temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=max_new_tokens, eos_token_id=eos,
                         pad_token_id=pad, use_cache=True)
    generated = out[:, width:]
    # tokens up to and including the first EOS, as the engines count them
    is_eos = (generated == eos).int()
    before_eos = (is_eos.cumsum(1) - is_eos) == 0
    return int(before_eos.sum())


def raw_vllm_generate(llm, vllm, prompts: list[list[int]], max_new_tokens: int, seeded: bool) -> int:
    """`LLM.generate` with the sampling parameters our engine sends (seeded: one seed per
    request, as `rollout.seeded_requests=true` does), or one shared unseeded parameter set."""
    common = {"temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_tokens": max_new_tokens, "logprobs": 0,
              "detokenize": False}
    if seeded:
        params = [vllm.SamplingParams(seed=s, **common) for s in torch.randint(0, 2**31 - 1, (len(prompts),)).tolist()]
    else:
        params = vllm.SamplingParams(**common)
    outputs = llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
    return sum(len(o.outputs[0].token_ids) for o in outputs)


def bench_rollout(policy, tokenizer, vllm_engine, prompts, max_new_tokens: int, rounds: int) -> dict:
    from rlhf.rollout.engine import HFEngine, SamplingParams

    sampling = SamplingParams(temperature=1.0, max_new_tokens=max_new_tokens)
    hf_engine = HFEngine(policy, tokenizer)

    def ours(engine):
        return lambda: sum(len(c.token_ids) for c in engine.generate(prompts, sampling))

    methods = {"hf_raw": lambda: raw_hf_generate(policy, tokenizer, prompts, max_new_tokens),
               "hf_engine": ours(hf_engine)}
    if vllm_engine is not None:
        llm, vllm = vllm_engine.llm, vllm_engine.vllm
        methods["vllm_raw"] = lambda: raw_vllm_generate(llm, vllm, prompts, max_new_tokens, vllm_engine.seeded_requests)
        methods["vllm_raw_unseeded"] = lambda: raw_vllm_generate(llm, vllm, prompts, max_new_tokens, False)
        methods["vllm_engine"] = ours(vllm_engine)
    meters = {name: Meter(name) for name in methods}
    for fn in methods.values():  # warm-up: first calls pay one-off costs (kernels, caches)
        fn()
    names = list(methods)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:  # rotate the order every round
            with meters[name].run():
                meters[name].units.append(methods[name]())
    result = {name: {"tokens_per_s": sum(m.units) / sum(m.seconds), "tokens": sum(m.units),
                     "seconds": sum(m.seconds), **m.memory.as_dict()} for name, m in meters.items()}
    for kind in ("hf", "vllm"):
        if f"{kind}_engine" in meters:
            ours_m, raw_m = meters[f"{kind}_engine"], meters[f"{kind}_raw"]
            per_round_ours = [u / s for u, s in zip(ours_m.units, ours_m.seconds)]
            per_round_raw = [u / s for u, s in zip(raw_m.units, raw_m.seconds)]
            result[f"{kind}_overhead"] = median_ratio(per_round_raw, per_round_ours) - 1.0
    if "vllm_raw_unseeded" in meters:  # what one sampling seed per request costs vLLM itself
        seeded, unseeded = meters["vllm_raw"], meters["vllm_raw_unseeded"]
        result["vllm_seeded_requests_cost"] = median_ratio(
            [u / s for u, s in zip(unseeded.units, unseeded.seconds)], [u / s for u, s in zip(seeded.units, seeded.seconds)]) - 1.0
    return result


# --- (b) training ------------------------------------------------------------------------------
def scratch_dir(prefix: str) -> str:
    """A temporary folder for a trainer's run directory, removed when the benchmark exits."""
    path = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def make_trainer(overrides: list[str], run_dir: Path):
    from rlhf.config import compose, validate
    from rlhf.trainer import Trainer

    cfg = compose(overrides)
    validate(cfg)
    return Trainer(cfg, run_dir)


def trl_grpo(policy_dir: Path, tokenizer, prompts_text: list[str], cfg, phases: int, on_phase_end, device: str,
             lengths: list[float]):
    """TRL's GRPOTrainer with the same model, batch, group size, lengths, lr, KL coefficient and
    optimizer steps per generation batch as our PPO (epochs x minibatches)."""
    from datasets import Dataset
    from transformers import PrinterCallback, ProgressCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from envs.text.gold import gold_components

    per_phase = int(cfg.train.prompts_per_step) * 2
    epochs, minibatches = int(cfg.algo.epochs), int(cfg.algo.minibatches)
    steps_per_phase = epochs * minibatches

    def gold_reward(completions, **_):
        return [gold_components(text)["gold"] for text in completions]

    class PhaseClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step % steps_per_phase == 0:
                on_phase_end()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    args = GRPOConfig(
        output_dir=scratch_dir("bench-trl-"), report_to="none", bf16=False, fp16=False,
        gradient_checkpointing=False, use_cpu=device == "cpu", save_strategy="no", logging_steps=steps_per_phase,
        learning_rate=float(cfg.algo.lr), beta=float(cfg.algo.kl_coef), num_generations=2,
        per_device_train_batch_size=per_phase // minibatches, steps_per_generation=minibatches,
        num_iterations=epochs, max_completion_length=int(cfg.rollout.max_new_tokens), temperature=1.0,
        top_p=1.0, top_k=0, max_steps=phases * steps_per_phase, seed=int(cfg.seed), disable_dropout=True,
        dataloader_num_workers=0, shuffle_dataset=True, max_grad_norm=float(cfg.algo.max_grad_norm))
    dataset = Dataset.from_dict({"prompt": prompts_text})
    trainer = GRPOTrainer(model=str(policy_dir), reward_funcs=gold_reward, args=args, train_dataset=dataset,
                          processing_class=tokenizer, callbacks=[PhaseClock()])
    for console in (PrinterCallback, ProgressCallback):  # keep the benchmark's output a table
        trainer.remove_callback(console)
    trainer.train()


def arm_overrides(cfg_overrides: list[str], one_step: bool) -> dict[str, list[str]]:
    """Per-algorithm overrides so every trainer (and TRL, which follows PPO's settings) takes the
    same optimizer steps on the same minibatch size each phase: PPO's epochs x minibatches
    (4 x 4 of 16 samples by default; P3O then takes minibatches of the same number of samples),
    or one step on the whole phase (one_step)."""
    from rlhf.config import compose

    cfg = compose([*cfg_overrides, "algo=ppo"])
    epochs, minibatches, prompts = int(cfg.algo.epochs), int(cfg.algo.minibatches), int(cfg.train.prompts_per_step)
    if one_step:
        arms = {"ppo": ["algo.epochs=1", "algo.minibatches=1"], "p3o": ["algo.epochs=1", f"algo.minibatch_pairs={prompts}"]}
    else:
        arms = {"ppo": [], "p3o": [f"algo.epochs={epochs}", f"algo.minibatch_pairs={max(1, prompts // minibatches)}"]}
    return {**arms, "ppo_shared": [*arms["ppo"], "algo.shared_trunk=true"]}


def bench_training(cfg_overrides: list[str], phases: int, skip: set[str], device: str, vllm_trainer=None,
                   vllm_memory: PeakMemory | None = None, one_step: bool = False) -> dict:
    """Our PPO and P3O (rollout=hf), and TRL GRPO, interleaved phase by phase, at equal optimizer
    steps per phase (PPO's epochs x minibatches) or at one optimizer step per phase."""
    tmp = Path(scratch_dir("bench-"))
    common = [*cfg_overrides, "reward=gold", "train.checkpoint_every=0", f"device={device}"]
    meters = {name: Meter(name) for name in ["ppo", "p3o", "ppo_shared", "ppo_vllm", "trl_grpo"]}
    ours = {}
    arms = arm_overrides(cfg_overrides, one_step)
    for name, algo in OURS.items():  # memory counts from before the trainer loads policy, reference, critic
        with meters[name].memory.measure():
            ours[name] = make_trainer([f"algo={algo}", *common, *arms[name]], tmp / name)
    if vllm_trainer is not None:
        ours["ppo_vllm"] = vllm_trainer
        meters["ppo_vllm"].memory = vllm_memory or PeakMemory()  # it was built (and measured) first
    episodes = {name: t.num_episodes for name, t in ours.items()}

    lengths = {name: [] for name in meters}  # mean generated tokens per sample, per phase
    parts = {name: [] for name in meters}  # where our phases spend their time (the trainer's timing_s/*)

    def our_phase(name):
        with meters[name].run():
            metrics = ours[name].train_step()
        meters[name].units.append(episodes[name])
        lengths[name].append(metrics["response_length/mean"])
        parts[name].append({k.split("/")[1]: v for k, v in metrics.items() if k.startswith("timing_s/")})

    for trainer in ours.values():  # warm-up phase each
        trainer.train_step()
    if "trl" in skip:
        for _ in range(phases):
            for name in ours:
                our_phase(name)
    else:
        trainer = ours["ppo"]
        prompts_text = training_prompts_from(trainer.cfg, 64 * int(trainer.cfg.train.prompts_per_step))
        clock = {"start": None, "phase": 0}
        trl_meter = meters["trl_grpo"]

        def on_phase_end():  # TRL finished a phase: book it, then run one phase of each of ours
            now = time.perf_counter()
            if clock["phase"] > 0:  # phase 0 is TRL's warm-up
                trl_meter.seconds.append(now - clock["start"])
                trl_meter.units.append(trainer.num_episodes)
            clock["phase"] += 1
            if clock["phase"] <= phases:
                for name in ours:
                    our_phase(name)
            clock["start"] = time.perf_counter()

        with trl_meter.memory.measure():
            trl_grpo(ours["ppo"].policy_dir, trainer.tokenizer, prompts_text, trainer.cfg, phases + 1,
                     on_phase_end, device, lengths["trl_grpo"])
        # TRL's peak includes our phases run inside its callback: report the larger of the two honestly
    result = {"optimizer_steps_per_phase": optimizer_steps(ours["ppo"].cfg)}
    for name, m in meters.items():
        if not m.seconds:
            continue
        result[name] = {"s_per_phase": statistics.median(m.seconds), "samples_per_s": sum(m.units) / sum(m.seconds),
                        "phases": len(m.seconds), "mean_response_tokens": statistics.mean(lengths[name] or [float("nan")]),
                        **m.memory.as_dict()}
        if parts[name]:
            result[name]["median_s"] = {k: statistics.median(p[k] for p in parts[name]) for k in parts[name][0]}
            # the framework's cost over generation: whole phase / its own generation time
            result[name]["phase_over_gen"] = median_ratio(m.seconds, [p["gen"] for p in parts[name]])
    for name in OURS:
        result[name]["optimizer_steps_per_phase"] = optimizer_steps(ours[name].cfg)
        result[name]["parameters"] = sum(p.numel() for p in ours[name].policy.parameters())
    if meters["trl_grpo"].seconds:
        trl_s = meters["trl_grpo"].seconds
        for name in ours:
            result[f"{name}_speedup_vs_trl"] = median_ratio(trl_s, meters[name].seconds[:len(trl_s)])
        result["trl_grpo"]["note"] = ("memory peak includes our phases, which run inside TRL's callback")
    for trainer in ours.values():
        if trainer is not vllm_trainer:
            trainer.close()
    return result


def optimizer_steps(cfg) -> int:
    """Optimizer steps one phase of this config takes (PPO/TRL: epochs x minibatches; P3O:
    epochs x pair minibatches)."""
    if str(cfg.algo.name) == "p3o":
        return int(cfg.algo.epochs) * max(1, int(cfg.train.prompts_per_step) // int(cfg.algo.minibatch_pairs))
    return int(cfg.algo.epochs) * int(cfg.algo.minibatches)


# Model sizes of the size axis (--sizes): Qwen2 shapes built from config, head_dim 64; the larger
# ones get a short SFT warm start (throughput, not quality, is measured; lengths are reported).
SIZES = {
    "tiny": [],
    "4m": ["model.hidden_size=256", "model.intermediate_size=1024", "model.num_hidden_layers=4",
           "model.num_attention_heads=4", "model.num_key_value_heads=2"],
    "30m": ["model.hidden_size=512", "model.intermediate_size=2048", "model.num_hidden_layers=8",
            "model.num_attention_heads=8", "model.num_key_value_heads=4"],
}
TARGETS = {"ppo": 2, "p3o": 3, "ppo_shared": 2, "ppo_vllm": 2}  # throughput over TRL GRPO at equal optimizer steps (issue 27)
OURS = {"ppo": "ppo", "p3o": "p3o", "ppo_shared": "ppo"}  # our arms in every training column -> algo (ppo_shared: algo.shared_trunk=true)
SIZE_SFT = ["model.sft.demonstrations=2000", "model.sft.epochs=1"]


# --- main ------------------------------------------------------------------------------------------
def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m rlhf.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small warm start, batch and lengths (~2 min)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where models run")
    parser.add_argument("--rounds", type=int, default=None, help="rollout rounds (default 8, quick 2)")
    parser.add_argument("--phases", type=int, default=None, help="timed training phases (default 5, quick 2)")
    parser.add_argument("--prompts", type=int, default=64, help="prompts per rollout-benchmark batch")
    parser.add_argument("--skip", default="",
                        help="comma list of parts to leave out: trl, vllm, rollout, training, one_step")
    parser.add_argument("--sizes", default="tiny",
                        help=f"comma list of model sizes for the training rows: {', '.join(SIZES)} (default tiny; "
                             "the larger ones take minutes per phase on 2 CPU cores)")
    parser.add_argument("--out", default="bench/results.json", help="JSON output file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for rlhf.train")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    valid = {"trl", "vllm", "rollout", "training", "one_step"}
    if skip - valid:
        raise SystemExit(f"--skip {','.join(sorted(skip - valid))} is not valid; valid choices: {', '.join(sorted(valid))}")
    sizes = [x.strip() for x in args.sizes.split(",") if x.strip()]
    if set(sizes) - set(SIZES) or not sizes:
        raise SystemExit(f"--sizes {args.sizes} is not valid; valid choices: {', '.join(SIZES)}")
    rounds = args.rounds or (2 if args.quick else 8)
    phases = args.phases or (2 if args.quick else 5)
    overrides = [*(QUICK if args.quick else []), *args.overrides]
    if args.quick:
        args.prompts = min(args.prompts, 32)

    from rlhf.config import compose

    cfg = compose(overrides)
    threads = int(cfg.threads)
    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(int(cfg.seed))
    started = time.time()

    # the vLLM trainer comes first: its engine also serves the raw-vLLM and engine rows
    vllm_trainer, vllm_memory = None, None
    if "vllm" not in skip:
        vllm_memory = PeakMemory()
        with vllm_memory.measure():
            vllm_trainer = make_trainer(["algo=ppo", "rollout=vllm", *overrides, "reward=gold", "train.checkpoint_every=0",
                                         f"device={args.device}"], Path(scratch_dir("bench-vllm-")))
    results: dict = {"setup": setup_info(cfg, args, rounds, phases, overrides)}
    if "rollout" not in skip:
        from agents.models import load_lm, load_tokenizer
        from rlhf.trainer import Trainer  # noqa: F401  (same import cost as the training part)

        policy_dir = vllm_trainer.policy_dir if vllm_trainer else warm_start(cfg)
        tokenizer = load_tokenizer(policy_dir)
        policy = load_lm(policy_dir).to(args.device).eval()
        prompts = [tokenizer(p, add_special_tokens=False)["input_ids"]
                   for p in training_prompts_from(cfg, args.prompts)]
        engine = vllm_trainer.rollout.engine if vllm_trainer else None
        if engine is not None:
            engine.load_weights(policy.named_parameters(), version=0)
        results["rollout"] = bench_rollout(policy, tokenizer, engine, prompts, int(cfg.rollout.max_new_tokens), rounds)
    if "training" not in skip:
        results["sizes"] = {}
        for size in sizes:
            size_overrides = overrides if size == "tiny" else [*SIZE_SFT, *overrides, *SIZES[size]]
            row = {"overrides": SIZES[size] + ([] if size == "tiny" else SIZE_SFT)}
            row["training"] = bench_training(size_overrides, phases, skip, args.device,
                                             vllm_trainer if size == "tiny" else None, vllm_memory)
            if "one_step" not in skip:
                row["training_one_step"] = bench_training(size_overrides, phases, skip | {"vllm"}, args.device,
                                                          one_step=True)
            row["parameters"] = row["training"]["ppo"]["parameters"]
            results["sizes"][size] = row
            print(f"size {size}: {row['parameters'] / 1e6:.2f}M parameters, {time.time() - started:.0f} s so far",
                  flush=True)
            write_json(args.out, results)  # a long size axis keeps what it measured so far
        if "tiny" in results["sizes"]:  # the default rows, where earlier versions of this file kept them
            results["training"] = results["sizes"]["tiny"]["training"]
            if "training_one_step" in results["sizes"]["tiny"]:
                results["training_one_step"] = results["sizes"]["tiny"]["training_one_step"]
    results["total_seconds"] = time.time() - started
    results["process_peak_rss_mib"] = peak_rss_mib()
    write_json(args.out, results)
    print_table(results)
    print(f"\nJSON: {args.out}  ({results['total_seconds']:.0f} s)")
    return results


def write_json(path: str, results: dict) -> None:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


def warm_start(cfg) -> Path:
    from rlhf.warmstart import warm_start_policy
    from envs import base as env_base
    from envs.base import env_settings

    return warm_start_policy(cfg, env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env)), print)


def training_prompts_from(cfg, n: int) -> list[str]:
    from envs import base as env_base
    from envs.base import env_settings

    env = env_base.make(str(cfg.env.name), split="train", **env_settings(cfg.env))
    return [env.reset(int(cfg.seed) * 1_000_000_007 + i) for i in range(n)]


def peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def setup_info(cfg, args, rounds: int, phases: int, overrides: list[str]) -> dict:
    import platform

    import transformers

    info = {"device": args.device, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
            "transformers": transformers.__version__, "overrides": overrides, "quick": args.quick,
            "rollout_prompts": args.prompts, "max_new_tokens": int(cfg.rollout.max_new_tokens),
            "prompts_per_phase": int(cfg.train.prompts_per_step), "group_size": 2,
            "rounds": rounds, "phases": phases, "sizes": args.sizes, "model": {k: cfg.model[k] for k in (
                "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")}}
    for package in ("vllm", "trl"):
        try:
            info[package] = __import__(package).__version__
        except ImportError:
            info[package] = None
    if args.device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_table(results: dict) -> None:
    if "rollout" in results:
        r = results["rollout"]
        print("\n(a) rollout            tokens/s   peak RSS +MiB")
        for name in ("hf_raw", "hf_engine", "vllm_raw", "vllm_engine", "vllm_raw_unseeded"):
            if name in r:
                print(f"    {name:<16} {r[name]['tokens_per_s']:>10.0f}   {r[name]['peak_rss_increase_mib']:>10.1f}")
        for kind in ("hf", "vllm"):
            if f"{kind}_overhead" in r:
                print(f"    {kind} engine overhead over raw: {100 * r[f'{kind}_overhead']:+.1f}% (target <= +5%)")
        if "vllm_seeded_requests_cost" in r:
            print(f"    vLLM with one seed per request vs unseeded: {100 * r['vllm_seeded_requests_cost']:+.1f}% time")
    if "training" in results:
        t = results["training"]
        print("\n(b) training           s/phase   samples/s   tokens/sample   peak RSS +MiB")
        for name in (*OURS, "ppo_vllm", "trl_grpo"):
            if name in t:
                print(f"    {name:<16} {t[name]['s_per_phase']:>8.2f}   {t[name]['samples_per_s']:>9.1f}   "
                      f"{t[name]['mean_response_tokens']:>13.1f}   {t[name]['peak_rss_increase_mib']:>10.1f}")
        for name in (*OURS, "ppo_vllm"):
            if "median_s" in t.get(name, {}):
                print(f"    {name} phase: " + ", ".join(f"{k} {v:.2f}s" for k, v in t[name]["median_s"].items()))
        for name in (*OURS, "ppo_vllm"):
            if f"{name}_speedup_vs_trl" in t:
                print(f"    {name} throughput / TRL GRPO: {t[f'{name}_speedup_vs_trl']:.2f}x "
                      f"(target >= {TARGETS.get(name, 2)}x at the tiny size)")
    if results.get("sizes"):
        print("\n(d) size axis          params   steps   ppo/TRL   p3o/TRL   ppo_shared/TRL   ppo phase/gen   p3o phase/gen")
        for size, row in results["sizes"].items():
            for column in ("training", "training_one_step"):
                t = row.get(column)
                if not t:
                    continue
                ratio = {n: t.get(f"{n}_speedup_vs_trl", float("nan")) for n in OURS}
                print(f"    {size:<8} {'1 step' if column.endswith('one_step') else 'equal':<8} "
                      f"{row['parameters'] / 1e6:>6.2f}M   {t['optimizer_steps_per_phase']:>5}   "
                      f"{ratio['ppo']:>6.2f}x   {ratio['p3o']:>6.2f}x   {ratio['ppo_shared']:>13.2f}x   "
                      f"{t['ppo']['phase_over_gen']:>12.2f}x"
                      f"   {t['p3o']['phase_over_gen']:>12.2f}x")
        print("    targets: ppo >= 2x and p3o >= 3x TRL at the tiny size, ahead at every size; "
              "p3o one-step phase/gen <= 1.5x at the tiny size")


if __name__ == "__main__":
    main()
