"""The run harness: what every algorithm's run shares (docs/layout.md, contract 9).

An algorithm -- the shared RL loop (rlhf.trainer) or a standalone one (DPO, DNO, C-MORL,
Reptile, best-of-n, ...) -- is a `Job`: its state, one `step()` (a phase, epoch, iteration or
stage) and optionally its own `evaluate()`. The harness owns everything else:

    run(job):
        resume?  -> load modules, job state and every RNG (python, numpy, torch, the job's
                    registered generators) from the checkpoint, continue at its step
        Logger   -> TensorBoard scalars for every step, a progress line every train.log_every
        loop     -> metrics = job.step(); log; evaluate every eval.every; checkpoint every
                    job.checkpoint_every (atomic, rlhf.checkpoint) and at the last step;
                    train.stop_after=N ends this invocation after N steps with a checkpoint
                    (a pause that train.resume continues, e.g. on a time-limited machine)
        final    -> job.evaluate() logged as eval/*, written to eval/step_NNNNNN.json

so `train(2N)` and `train(N) + resume + train(N)` agree for every algorithm, and no algorithm
writes its own checkpoint, resume or evaluation-file code.
"""
from __future__ import annotations

import json
import logging
import random
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import nn

from rlhf import checkpoint as ckpt
from rlhf.logger import Logger

log = logging.getLogger("rlhf")
RESERVED = ("step", "rng", "config", "algo")  # keys of a checkpoint's state the harness writes


class Job:
    """One algorithm's run as the harness drives it. Set `total` in `__init__`, implement
    `step()`; override the rest as the algorithm needs."""

    unit = "step"  # what one step is called in the progress line (phase, epoch, iteration, stage)

    def __init__(self, cfg, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.total = int(cfg.train.steps)
        self.steps_done = 0  # set by the harness: steps finished before the current one
        self.logger: Logger | None = None  # set by the harness for extra scalars (other x-axes)
        self.eval_samples: list[dict] = []  # rows evaluate() may add; written to eval/samples_step_N.jsonl
        self.train_samples: list[dict] = []  # rows step() may add when samples_due(); samples/train_step_N.jsonl

    # --- what an algorithm supplies -------------------------------------------------------------
    def step(self) -> dict[str, float]:
        """Advance one step; return its metrics (logged at x = steps_done + 1)."""
        raise NotImplementedError

    def modules(self) -> dict[str, nn.Module]:
        """Weights saved by name in every checkpoint and loaded back on resume."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything else a resume needs (optimizers, counters, archives, controllers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Called on resume after the modules' weights are loaded."""

    def generators(self) -> dict[str, Any]:
        """Private RNGs whose state a checkpoint must hold besides python/numpy/torch's global
        ones: torch.Generator, random.Random, numpy Generator or RandomState, by name."""
        return {}

    def evaluate(self) -> dict[str, float]:
        """Held-out evaluation (at the end, and every eval.every steps); {} for none. Samples
        appended to `self.eval_samples` (one dict per response) are saved next to it."""
        return {}

    @property
    def checkpoint_every(self) -> int:
        """Steps between checkpoints: `algo.checkpoint_every` for an algorithm whose steps are
        its own (chunks, meta-iterations), else `train.checkpoint_every`; 0 = only the last."""
        return int(self.cfg.algo.get("checkpoint_every", self.cfg.train.checkpoint_every))

    @property
    def keep_checkpoints(self) -> int:
        """Most recent checkpoints kept on disk (an algorithm whose iterates are its output,
        such as DNO's, keeps them all)."""
        return int(self.cfg.train.keep_checkpoints)

    @property
    def threads(self) -> int | None:
        """Torch CPU threads while the job runs: `algo.threads` where the algorithm has one
        (small control nets, an emulator in-process: extra threads only add synchronisation);
        None keeps the process's setting (`threads`)."""
        n = self.cfg.algo.get("threads")
        return int(n) if n else None

    def samples_due(self) -> bool:
        """Whether the step about to run should leave a few of its samples (train.samples_every)."""
        every = int(self.cfg.train.get("samples_every", 0) or 0)
        return every > 0 and (self.steps_done + 1) % every == 0

    @property
    def eval_every(self) -> int:
        return int(self.cfg.eval.every)

    @property
    def eval_at_start(self) -> bool:
        """Evaluate before the first step too (eval.at_start): every eval/* curve gets its baseline.
        A job that replaces the evaluation schedule (overrides eval_every: BoN's curves, DNO's
        per-iterate win rates, control jobs evaluated by rlhf.evaluate) has no step-0 evaluation."""
        return bool(self.cfg.eval.get("at_start", True)) and type(self).eval_every is Job.eval_every

    def log_x(self) -> int:
        """TensorBoard x of the step just finished (default: the step count; a control
        algorithm may log against environment steps)."""
        return self.steps_done

    def write_extra(self, checkpoint_dir: Path) -> None:
        """Add files to a checkpoint being written (an HF save_pretrained copy, a front plot)."""

    def describe(self) -> str:
        """One line printed when the run starts."""
        return f"{self.cfg.algo.name} on env={self.cfg.env.name}: {self.total} {self.unit}s"

    def close(self) -> None:
        """Release engines, environments, workers (always called, also after an error)."""


@contextmanager
def torch_threads(n: int):
    """Run a block with n torch CPU threads and restore the caller's setting afterwards (small
    control nets: extra threads only add synchronisation)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# --- RNG state --------------------------------------------------------------------------------------

def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state(generators: dict[str, Any] | None = None) -> dict[str, Any]:
    """Global python/numpy/torch RNG states plus each registered generator's."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "generators": {name: _get_state(g) for name, g in (generators or {}).items()}}
    if torch.cuda.is_available():  # sampling on a GPU (device=cuda) draws from the CUDA generators
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, Any] | None = None) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    saved = state.get("generators", {})
    for name, generator in (generators or {}).items():
        if name not in saved:
            raise KeyError(f"checkpoint has no state for generator '{name}' (has {sorted(saved)})")
        _set_state(generator, saved[name])


def _get_state(g) -> Any:
    if isinstance(g, torch.Generator):
        return g.get_state()
    if isinstance(g, random.Random):
        return g.getstate()
    if isinstance(g, np.random.Generator):
        return g.bit_generator.state
    if isinstance(g, np.random.RandomState):
        return g.get_state()
    raise TypeError(f"cannot save the state of a {type(g).__name__}; register torch.Generator, random.Random, "
                    "numpy.random.Generator or numpy.random.RandomState")


def _set_state(g, state) -> None:
    if isinstance(g, torch.Generator):
        g.set_state(state)
    elif isinstance(g, random.Random):
        g.setstate(state)
    elif isinstance(g, np.random.Generator):
        g.bit_generator.state = state
    else:
        g.set_state(state)


# --- checkpoints ------------------------------------------------------------------------------------

def save(job: Job, step: int) -> Path:
    state = job.state_dict()
    clash = sorted(set(state) & set(RESERVED))
    if clash:
        raise KeyError(f"{type(job).__name__}.state_dict() uses reserved keys {clash}")
    state.update(step=step, rng=rng_state(job.generators()), algo=str(job.cfg.algo.name),
                 config=OmegaConf.to_container(job.cfg, resolve=True))
    path = ckpt.save_checkpoint(job.run_dir, step, state, job.modules(), job.keep_checkpoints,
                                job.write_extra)
    log.info(f"[checkpoint] {path}")
    return path


def restore(job: Job, path: Path) -> int:
    """Load a checkpoint into `job`; returns the step it was taken at."""
    state, module_states = ckpt.load_checkpoint(path)
    saved_algo = state.get("algo", state.get("config", {}).get("algo", {}).get("name"))
    if saved_algo is not None and saved_algo != str(job.cfg.algo.name):
        raise ValueError(f"checkpoint {path} is of algo={saved_algo}, this run is algo={job.cfg.algo.name}")
    for name, module in job.modules().items():
        if name not in module_states:
            raise KeyError(f"checkpoint {path} has no '{name}' weights (has {sorted(module_states)})")
        module.load_state_dict(module_states[name])
    job.load_state_dict(state)
    set_rng_state(state["rng"], job.generators())
    log.info(f"[resume] from {path} at {job.unit} {int(state['step'])}")
    return int(state["step"])


def save_eval(run_dir: Path, step: int, metrics: dict[str, float], samples: list[dict] | None = None) -> Path:
    """eval/step_NNNNNN.json: the evaluation of the checkpoint at `step`; with `samples`, also
    eval/samples_step_NNNNNN.jsonl, one evaluated response per line (to read, or to compare
    runs problem by problem)."""
    out = Path(run_dir) / "eval" / f"step_{step:06d}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"step": step, **metrics}, indent=2, sort_keys=True))
    if samples:
        save_samples(run_dir, step, samples)
    return out


def save_samples(run_dir: Path, step: int, samples: list[dict], name: str = "eval/samples_step") -> Path:
    out = Path(run_dir) / f"{name}_{step:06d}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(row) + "\n" for row in samples))
    return out


def evaluate_job(job: Job, step: int) -> dict[str, float]:
    """job.evaluate(), with the samples it records written to eval/samples_step_N.jsonl. The
    global RNGs come back as they were, so evaluating (or not, or more often) never changes
    what training draws."""
    job.eval_samples = []
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng():
        metrics = job.evaluate()
    random.setstate(py_state)
    np.random.set_state(np_state)
    if job.eval_samples:
        save_samples(job.run_dir, step, job.eval_samples)
        if job.logger is not None:  # TensorBoard's text tab: the first few samples
            job.logger.text("eval/samples", samples_table(job.eval_samples[:8]), job.log_x())
    return metrics


FIRST = ("gold", "accuracy", "pass", "proxy", "kl", "response_length", "distinct_1", "distinct_2")


def before_after(start: dict[str, float], final: dict[str, float], step: int) -> str:
    """`[eval] before training -> after step N`: the warm start's held-out values beside the
    policy's, headline metrics first (a collapse in diversity shows next to the gain)."""
    keys = [k for k in FIRST if k in start and k in final] + sorted(k for k in final if k in start and k not in FIRST)
    return f"[eval] held out, before training -> after step {step}: " + " | ".join(
        f"{k} {start[k]:.4g} -> {final[k]:.4g}" for k in keys)


def samples_table(rows: list[dict]) -> str:
    """A markdown table of evaluated samples: prompt, response and every numeric score."""
    scores = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and k != "seed"]
    cell = lambda text: str(text).replace("|", "\\|").replace("\n", " ⏎ ")[:300]  # noqa: E731
    lines = ["| prompt | response | " + " | ".join(scores) + " |", "|---" * (2 + len(scores)) + "|"]
    lines += [f"| {cell(r.get('prompt', ''))} | {cell(r.get('response', ''))} | "
              + " | ".join(f"{r[k]:.3g}" for k in scores) + " |" for r in rows]
    return "\n".join(lines)


# --- the loop ---------------------------------------------------------------------------------------

def run(job: Job) -> dict[str, float]:
    """Drive `job` to `job.total` steps (resuming if train.resume is set); returns the last
    step's metrics merged with the final evaluation."""
    with torch_threads(job.threads or torch.get_num_threads()):
        return _run(job)


def _run(job: Job) -> dict[str, float]:
    cfg = job.cfg
    try:
        step = 0
        if cfg.train.resume:
            step = restore(job, ckpt.resolve_resume(cfg.train.resume, job.run_dir))
        job.steps_done = step
        logger = Logger(job.run_dir, job.total, int(cfg.train.log_every), first_step=step + 1, unit=job.unit,
                        purge_x=job.log_x() + 1)
        job.logger = logger
        log.info(f"[train] {job.describe()}; run dir {job.run_dir}")
        metrics: dict[str, float] = {}
        final: dict[str, float] = {}
        stop_after = cfg.train.get("stop_after")
        stop_at = min(job.total, step + int(stop_after)) if stop_after else job.total
        try:
            every = job.eval_every
            if job.eval_at_start and step == 0:  # the reference point every curve starts from
                start = evaluate_job(job, 0)
                logger.scalars("eval/", start, 0)
                if start:  # not eval/step_*.json: that name marks a finished run
                    (job.run_dir / "eval").mkdir(parents=True, exist_ok=True)
                    (job.run_dir / "eval" / "start.json").write_text(json.dumps(start, indent=2, sort_keys=True))
            while step < stop_at:
                job.steps_done = step
                metrics = job.step()
                step += 1
                job.steps_done = step
                logger.log(step, metrics, x=job.log_x())
                if job.train_samples:  # a few of this step's samples (train.samples_every)
                    save_samples(job.run_dir, step, job.train_samples, "samples/train_step")
                    logger.text("train/samples", samples_table(job.train_samples), job.log_x())
                    job.train_samples = []
                if every and step % every == 0 and step < job.total:
                    logger.scalars("eval/", evaluate_job(job, step), job.log_x())
                if step == stop_at or (job.checkpoint_every and step % job.checkpoint_every == 0):
                    save(job, step)
            if step < job.total:
                log.info(f"[train] paused after {job.unit} {step}/{job.total} (train.stop_after={stop_after}); "
                         f"continue with train.resume=true hydra.run.dir={job.run_dir}")
                return metrics
            final = evaluate_job(job, step)
            if final:
                logger.scalars("eval/", final, job.log_x())
                save_eval(job.run_dir, step, final)
                log.info("[eval] " + " ".join(f"{k}={v:.4g}" for k, v in final.items()))
                start_file = job.run_dir / "eval" / "start.json"
                if start_file.is_file():
                    log.info(before_after(json.loads(start_file.read_text()), final, step))
        finally:
            logger.close()
    finally:
        job.close()
    return {**metrics, **final}
