"""Reproduction suite: `python -m rlhf.reproduce <claim> [--quick] [--out DIR]`.

A claim is a small declarative definition (rlhf/reproduce/claims/): the runs it needs
(config overrides: algorithms x settings x seeds), the metrics to collect from their
TensorBoard logs, the plots, and a criterion that turns the numbers into a verdict.
Runs go through the ordinary training entry point (rlhf.train.run), so the warm starts
(SFT, reward models) are cached and shared, and every run directory is a normal run that
TensorBoard and rlhf.evaluate understand.

Output (one directory per claim): plots (PNG), report.md with tables and the verdict line
`REPRODUCED` / `NOT REPRODUCED` / `INCONCLUSIVE` (criterion, effects with 95% intervals:
rlhf.reproduce.stats), results.json.
"""
from __future__ import annotations

import functools
import importlib
import json
import logging
import pkgutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger("rlhf")


@dataclass
class RunSpec:
    """One run of a sweep: a name, its arm (what is compared), and overrides. A training run
    by default; with `evaluate` set, an evaluation (python -m rlhf.evaluate) of that earlier
    run's checkpoint, with these overrides, written into its own run directory."""
    name: str
    arm: str
    overrides: list[str]
    params: dict[str, Any] = field(default_factory=dict)  # e.g. {"kl_coef": 0.1, "seed": 1}
    evaluate: str | None = None  # name of the run (earlier in the sweep) to evaluate
    # called with the sweep's runs directory before this run starts (also when it is reused),
    # e.g. to derive a setting from earlier runs' logs into a file this run reads
    prepare: Callable[[Path], None] | None = None


@dataclass
class RunResult:
    spec: RunSpec
    run_dir: Path
    scalars: dict[str, list[tuple[int, float]]]  # every TensorBoard scalar of the run
    seconds: float
    reused: bool = False  # finished by an earlier invocation


@dataclass
class Verdict:
    reproduced: bool
    criterion: str  # what was tested, in words, with its threshold
    measured: str  # the measured values the decision used
    # REPRODUCED / NOT REPRODUCED / INCONCLUSIVE (rlhf.reproduce.stats); "" = from `reproduced`
    # (claims that still decide by a threshold without an interval)
    outcome: str = ""

    @property
    def word(self) -> str:
        return self.outcome or ("REPRODUCED" if self.reproduced else "NOT REPRODUCED")

    def line(self) -> str:
        return f"{self.word}: {self.criterion} — measured: {self.measured}"


@dataclass
class Claim:
    name: str
    paper: str
    statement: str  # the paper's qualitative claim, as tested here
    runs: Callable[[bool], list[RunSpec]]  # quick -> the sweep
    analyze: Callable[[list[RunResult], Path], tuple[Verdict, str]]  # -> verdict, markdown body
    budget: str = ""  # what the full sweep costs on 2 cores
    # runs executed at once, each in its own spawned process (results stay in sweep order).
    # Only for sweeps whose runs do not read each other's outputs; the shared caches (SFT,
    # reward models, sample pools) are safe, since a build holds a file lock the others wait on.
    workers: int = 1
    # Criterion history: each earlier criterion and the verdict it gave, oldest first, kept
    # verbatim when a criterion changes after a full run (the first verdict is never erased).
    history: list[str] = field(default_factory=list)
    doc: str = ""  # the claim's section in docs/, linked from the README's claims table


def wait_for(name: str, timeout: float = 3600.0) -> Callable[[Path], None]:
    """A RunSpec.prepare that waits until the sweep's run `name` has finished: for a run that
    reads a second run besides the one it evaluates (parallel sweeps order runs, not readers).
    A partial of a module-level function, so that it pickles into spawned sweep workers."""
    return functools.partial(_wait_for, name, timeout)


def _wait_for(name: str, timeout: float, runs_dir: Path) -> None:
    deadline = time.time() + timeout
    while not any((runs_dir / name / "eval").glob("step_*.json")):
        if time.time() > deadline:
            raise TimeoutError(f"{runs_dir / name} has not finished; a later run of the sweep needs it")
        time.sleep(5)


def eval_samples(run_dir: Path, which: str = "last") -> list[dict]:
    """Per-prompt rows (problem, game, ...) of a run's held-out evaluation: the "last" or the
    "first" eval/samples_step_*.jsonl, ordered by the prompt's seed."""
    files = sorted((run_dir / "eval").glob("samples_step_*.jsonl"))
    if not files:
        raise FileNotFoundError(f"{run_dir}/eval has no samples_step_*.jsonl")
    rows = [json.loads(line) for line in (files[-1] if which == "last" else files[0]).read_text().splitlines()]
    return sorted(rows, key=lambda r: r["seed"])


_CLAIMS: dict[str, Claim] = {}


def register(claim: Claim) -> Claim:
    _CLAIMS[claim.name] = claim
    return claim


def all_claims() -> dict[str, Claim]:
    package = importlib.import_module("rlhf.reproduce.claims")

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")
    return dict(sorted(_CLAIMS.items()))


def get_claim(name: str) -> Claim:
    known = all_claims()
    if name not in known:
        raise SystemExit(f"unknown claim '{name}'; valid choices: {', '.join(known)}")
    return known[name]


RUN_RECORD = "reproduce_run.json"  # what made a finished sweep run: its overrides and the training code's digest


def training_code_digest() -> str:
    """Digest of the code and configs a run's numbers depend on (rlhf, envs, agents, configs), leaving
    out rlhf/reproduce: editing a claim's analysis or history must not force its runs to be retrained."""
    from rlhf.cache import source_digest

    return source_digest(["rlhf", "envs", "agents", "configs"], suffixes=(".py", ".yaml"), exclude=("rlhf.reproduce",))


def run_record(spec: RunSpec, code: str) -> dict:
    return {"overrides": list(spec.overrides), "evaluate": spec.evaluate, "code": code}


def reusable(spec: RunSpec, run_dir: Path, code: str) -> bool:
    """A finished run is reused only when the same overrides ran on the same training code. Any other
    finished run (other settings, older code, or one made before runs were recorded) is moved aside to
    `<name>.stale-<n>` (nothing is deleted) and trained again."""
    done = run_dir / "eval"
    if not (done.exists() and any(done.glob("step_*.json"))):
        return False
    record = run_dir / RUN_RECORD
    if record.exists() and json.loads(record.read_text()) == run_record(spec, code):
        return True
    n = 1
    while run_dir.with_name(f"{run_dir.name}.stale-{n}").exists():
        n += 1
    stale = run_dir.rename(run_dir.with_name(f"{run_dir.name}.stale-{n}"))
    why = "it has no record of what made it" if not record.exists() else "its settings or the training code changed"
    log.info(f"[reproduce] not reusing {run_dir}: {why}; moved to {stale.name}, training it again")
    return False


def execute(spec: RunSpec, runs_dir: Path) -> RunResult:
    """Train one run (or reuse it if a previous invocation finished it with the same overrides on the
    same training code) and read its logs."""
    from rlhf.config import compose
    from rlhf.logger import read_scalars
    from rlhf.train import run

    run_dir = runs_dir / spec.name
    start = time.time()
    if spec.prepare is not None:
        spec.prepare(runs_dir)
    code = training_code_digest()
    reused = reusable(spec, run_dir, code)
    if reused:
        log.info(f"[reproduce] reusing finished run {run_dir}")
    else:
        # "{runs}" in an override stands for this sweep's runs directory (e.g. a value model path)
        overrides = [o.replace("{runs}", str(runs_dir.resolve())) for o in spec.overrides]
        if spec.evaluate:
            from rlhf.evaluate import main as evaluate

            evaluate([f"run={runs_dir / spec.evaluate}", f"out={run_dir}", *overrides])
        else:
            run(compose(overrides), run_dir)
        (run_dir / RUN_RECORD).write_text(json.dumps(run_record(spec, code), indent=1))
    write_hparams(spec, run_dir)
    return RunResult(spec, run_dir, read_scalars(run_dir), time.time() - start, reused)


def write_hparams(spec: RunSpec, run_dir: Path) -> None:
    """TensorBoard HParams of a sweep run (its arm, params and overrides against its final
    evaluation), so the HPARAMS tab of `tensorboard --logdir <claim>/runs` compares the sweep.
    Written once per run directory."""
    marker = run_dir / "hparams.done"
    finals = sorted((run_dir / "eval").glob("step_*.json"))
    if marker.exists() or not finals:
        return
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    final = json.loads(finals[-1].read_text())
    metrics = {f"hparams/{k}": float(v) for k, v in final.items() if isinstance(v, (int, float)) and k != "step"}
    params = {"arm": spec.arm, "overrides": " ".join(spec.overrides)[:500],
              **{k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in spec.params.items()}}
    with SummaryWriter(str(run_dir)) as writer:
        for summary in hparams(params, metrics):
            writer.file_writer.add_summary(summary)
        for key, value in metrics.items():
            writer.add_scalar(key, value, int(final.get("step", 0)))
    marker.write_text("")


def execute_numbered(i: int, total: int, spec: RunSpec, runs_dir: Path) -> RunResult:
    log.info(f"[reproduce] run {i}/{total}: {spec.name} ({' '.join(spec.overrides)})")
    result = execute(spec, runs_dir)
    log.info(f"[reproduce] run {i}/{total} {spec.name} done in {result.seconds:.0f}s")
    return result


def _worker_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(processName)s %(message)s")


def execute_parallel(specs: list[RunSpec], runs_dir: Path, workers: int,
                     execute_one: Callable[[int, int, RunSpec, Path], RunResult] | None = None) -> list[RunResult]:
    """The sweep's runs on `workers` spawned processes; results in sweep order. A run is handed
    out, in sweep order, once the run it evaluates (RunSpec.evaluate) has finished. A failed run
    fails the sweep with its error (runs not yet handed to a worker are dropped). `execute_one`
    (a module-level function, for the spawned workers to import) replaces execute_numbered."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    waiting, running, finished, results = list(enumerate(specs, 1)), {}, set(), {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_worker_logging) as pool:
        try:
            while waiting or running:
                ready = [(i, spec) for i, spec in waiting if spec.evaluate is None or spec.evaluate in finished]
                for i, spec in ready:
                    running[pool.submit(execute_one or execute_numbered, i, len(specs), spec, runs_dir)] = (i, spec)
                    waiting.remove((i, spec))
                if not running:
                    missing = sorted({spec.evaluate for _, spec in waiting})
                    raise ValueError(f"runs evaluate runs that are not in the sweep: {missing}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i, spec = running.pop(future)
                    results[i] = future.result()
                    finished.add(spec.name)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [results[i] for i in sorted(results)]


def previous_minutes(out: Path) -> float | None:
    """The wall time an earlier invocation recorded for this output directory."""
    import re

    if (out / "results.json").is_file() and "minutes" in (old := json.loads((out / "results.json").read_text())):
        return float(old["minutes"])
    found = re.search(r"wall time ([0-9.]+) min", (out / "report.md").read_text()) if (out / "report.md").is_file() \
        else None
    return float(found.group(1)) if found else None


def run_claim(name: str, quick: bool, out: Path) -> Verdict:
    claim = get_claim(name)
    out.mkdir(parents=True, exist_ok=True)
    specs = claim.runs(quick)
    log.info(f"[reproduce] {claim.name}{' (quick)' if quick else ''}: {len(specs)} runs -> {out}")
    start = time.time()
    if claim.workers > 1:
        results = execute_parallel(specs, out / "runs", claim.workers)
    else:
        results = [execute_numbered(i, len(specs), spec, out / "runs") for i, spec in enumerate(specs, 1)]
    verdict, body = claim.analyze(results, out)
    minutes, when = (time.time() - start) / 60, ""
    if results and all(r.reused for r in results):  # a re-analysis: keep the wall time of the sweep that trained
        minutes, when = previous_minutes(out) or minutes, " (of the sweep that trained them; this run re-analysed them)"
    report = "\n".join([
        f"# {claim.name}{' (quick)' if quick else ''}", "",
        f"**Paper:** {claim.paper}", "", f"**Claim tested:** {claim.statement}", "",
        f"**Verdict:** {verdict.line()}", "", body, "",
        *(["## Criterion history", "", *[f"- {h}" for h in claim.history], ""] if claim.history else []),
        f"Runs: {len(results)} ({'quick mode' if quick else 'full sweep'}), wall time {minutes:.1f} min{when}. "
        f"Every number above was read from the runs' TensorBoard logs under `runs/`.", ""])
    (out / "report.md").write_text(report)
    (out / "results.json").write_text(json.dumps({
        "claim": claim.name, "quick": quick, "verdict": verdict.line(), "outcome": verdict.word,
        "reproduced": verdict.reproduced, "history": claim.history, "statement": claim.statement,
        "criterion": verdict.criterion, "measured": verdict.measured, "minutes": round(minutes, 1), "doc": claim.doc,
        "runs": [{"name": r.spec.name, "arm": r.spec.arm, "params": r.spec.params, "run_dir": str(r.run_dir),
                  "seconds": r.seconds} for r in results]}, indent=2))
    log.info(f"[reproduce] {verdict.line()}")
    log.info(f"[reproduce] report: {out / 'report.md'}")
    return verdict
