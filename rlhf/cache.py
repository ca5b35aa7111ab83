"""Content-addressed cache for warm starts (tokenizer + SFT policy, reward models).

An artifact's key is a hash of everything that determines it: its config, the data
settings, the seed, and the source code of the modules that build it (so editing the
generator invalidates the cache without anyone remembering to). Builds go to a temporary
directory renamed into place, under a file lock, so a crash or a parallel sweep never
leaves a half-written artifact that a later run would trust.
"""
from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf

DONE_MARKER = "ARTIFACT_DONE"
# What a first build costs on 2 CPU cores (measured; README "Measured numbers"), said before a
# build starts when this cache has no earlier build of the kind to estimate from.
TYPICAL = {"sft": "about 1 min for the default text model, up to ~4 min for env=games or env=math",
           "rm": "about 30 s per reward model, up to ~2 min", "prefs": "up to ~1 min", "code_pool": "seconds",
           "bon_pool": "up to ~40 s", "pref_lists": "up to ~20 s"}


def estimate(root: Path) -> str:
    """How long a build of this kind took before (from the DONE markers under `root`)."""
    times = []
    for marker in root.glob(f"*/{DONE_MARKER}"):
        try:
            times.append(float(marker.read_text().strip().rstrip("s")))
        except ValueError:
            continue
    if times:
        times.sort()
        low, mid, high = times[0], times[len(times) // 2], times[-1]
        took = f"{mid:.0f} s" if high - low < 1 else f"{low:.0f}-{high:.0f} s, median {mid:.0f} s"
        return f"earlier builds of this kind here took {took}"
    return f"typically {TYPICAL.get(root.name, 'under a few minutes')} on 2 cores"


def source_digest(module_names: list[str], suffixes: tuple[str, ...] = (".py",), exclude: tuple[str, ...] = ()) -> str:
    """Digest of the named modules' source (a package: every file with one of `suffixes` under it,
    leaving out the subpackages named in `exclude`, e.g. "rlhf.reproduce")."""
    skipped = [Path(importlib.import_module(name).__file__).parent for name in exclude]
    digest = hashlib.sha256()
    for name in sorted(module_names):
        module = importlib.import_module(name)
        paths = [Path(module.__file__)]
        if paths[0].name == "__init__.py":  # a package: hash all of it
            paths = sorted(p for p in paths[0].parent.rglob("*") if p.suffix in suffixes
                           and not any(p.is_relative_to(d) for d in skipped))
        for path in paths:
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def to_plain(value: Any) -> Any:
    if isinstance(value, DictConfig) or OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    return value


def artifact_key(spec: dict[str, Any]) -> str:
    text = json.dumps({k: to_plain(v) for k, v in spec.items()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Artifacts are built with one torch thread whatever the caller runs with: CPU kernels sum in an
# order that depends on the thread count (an SFT policy built with 2 threads differs from one built
# with 1 by up to 2.5e-5 per weight, and every run from it differs after), so an artifact's content
# must not depend on which process happened to build it first.
BUILD_THREADS = 1


def cached(cache_dir: str | os.PathLike, kind: str, spec: dict[str, Any],
           build: Callable[[Path], None], log: Callable[[str], None] = print) -> Path:
    """Return the directory of the artifact `kind/<hash(spec)>`, building it if needed."""
    root = Path(cache_dir).expanduser().resolve() / kind
    root.mkdir(parents=True, exist_ok=True)
    key = artifact_key(spec)
    final = root / key
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (final / DONE_MARKER).exists():
            log(f"[cache] reusing {kind} {final}")
            return final
        if final.exists():  # left by a crash before this scheme's rename; never trusted
            shutil.rmtree(final)
        tmp = root / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        start = time.time()
        log(f"[cache] building {kind} {key} (first time only; {estimate(root)})")
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(BUILD_THREADS)
        try:
            build(tmp)
        finally:
            torch.set_num_threads(threads)
        (tmp / "spec.json").write_text(json.dumps({k: to_plain(v) for k, v in spec.items()},
                                                  indent=2, sort_keys=True, default=str))
        (tmp / DONE_MARKER).write_text(f"{time.time() - start:.1f}s\n")
        os.rename(tmp, final)
        log(f"[cache] built {kind} in {time.time() - start:.1f}s -> {final}")
        return final
