"""Atomic checkpoints that resume exactly (docs/layout.md, contract 7).

Layout of a run directory:
    runs/<run>/config.yaml                    resolved config
    runs/<run>/events.out.tfevents.*          TensorBoard
    runs/<run>/checkpoints/step_000050/       one checkpoint:
        trainer_state.pt   step, RNG states, prompt-sampler position, algorithm state
                           (optimizer, KL controller, running stats), engine version
        <module>.pt        state dict of each trainable module (policy, critic, ...)
        hf/                save_pretrained copy of the policy + tokenizer
    runs/<run>/checkpoints/latest             name of the newest complete checkpoint

A checkpoint is written into a temporary directory and renamed into place, and `latest`
is replaced atomically, so `kill -9` at any moment leaves either the old or the new
checkpoint, never a torn one.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STATE = "trainer_state.pt"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], modules: dict[str, torch.nn.Module],
                    keep: int, write_extra: Callable[[Path], None] | None = None) -> Path:
    """Write checkpoint `step` atomically. `write_extra(tmp_dir)` adds files (the trainer's
    HF save_pretrained copy) before the directory is renamed into place."""
    root = Path(run_dir) / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    name = f"step_{step:06d}"
    final, tmp = root / name, root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(state, tmp / STATE)
    for module_name, module in modules.items():
        torch.save(module.state_dict(), tmp / f"{module_name}.pt")
    if write_extra is not None:
        write_extra(tmp)
    if final.exists():  # re-running a step after resume: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    pointer_tmp = root / f".{LATEST}.tmp-{os.getpid()}"
    pointer_tmp.write_text(name + "\n")
    os.replace(pointer_tmp, root / LATEST)
    _fsync_dir(root)
    _prune(root, keep, final)
    return final


def _prune(root: Path, keep: int, newest: Path) -> None:
    complete = sorted(p for p in root.glob("step_*") if p.is_dir())
    for old in complete[:-max(1, keep)]:
        if old != newest:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = Path(run_dir) / CHECKPOINTS / LATEST
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if (path / STATE).exists() else None


def resolve_resume(resume: Any, run_dir: Path) -> Path:
    """`train.resume` -> checkpoint directory.

    true/"latest": the newest checkpoint of `run_dir` itself (never a search elsewhere: a
    typo must not resume another run). A path: a checkpoint directory, or a run directory
    (its newest checkpoint)."""
    if resume is True or str(resume).lower() in ("true", "latest"):
        found = latest_checkpoint(run_dir)
        if found is None:
            raise FileNotFoundError(f"train.resume={resume}: the run directory {run_dir} has no checkpoint "
                                    f"(expected {Path(run_dir) / CHECKPOINTS / LATEST}); to continue another run "
                                    "give its directory: train.resume=<run dir>")
        return found
    path = Path(str(resume)).expanduser()
    if (path / STATE).exists():
        return path
    found = latest_checkpoint(path) if path.is_dir() else None
    if found is None:
        raise FileNotFoundError(f"train.resume={resume}: not a checkpoint directory and not a run "
                                f"directory with checkpoints (expected {path}/{CHECKPOINTS}/{LATEST} or {path}/{STATE})")
    return found


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
    state = torch.load(Path(path) / STATE, weights_only=False)
    modules = {p.stem: torch.load(p, weights_only=True) for p in Path(path).glob("*.pt") if p.name != STATE}
    return state, modules
