"""TensorBoard scalars for every phase, plus a progress line on the console."""
from __future__ import annotations

import logging
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

log = logging.getLogger("rlhf")

# Shown on the console progress line, in this order, when present.
CONSOLE_KEYS = [("objective/scores", "score"), ("objective/gold", "gold"), ("objective/kl", "kl"),
                ("response_length/mean", "len"), ("perf/tokens_per_s", "tok/s"),
                ("dpo/loss", "loss"), ("dpo/rewards_accuracy", "acc"), ("dpo/rewards_margin", "margin"),
                ("dpo/logps_chosen", "logp_w")]


class Logger:
    def __init__(self, run_dir: Path, total_steps: int, every: int, first_step: int = 1, unit: str = "step",
                 purge_x: int | None = None):
        # purge_step drops events a crashed run wrote after its last checkpoint (x of its first
        # step when scalars are logged against another axis, e.g. environment steps).
        purge = purge_x if purge_x is not None else first_step
        self.writer = SummaryWriter(str(run_dir), purge_step=purge if first_step > 1 else None)
        self.total, self.every, self.first, self.unit = total_steps, max(1, every), first_step, unit
        self.start = self.window_start = time.time()
        self.window: dict[str, list[float]] = {}  # console values since the last progress line
        self.window_steps = 0

    def log(self, step: int, metrics: dict[str, float], x: int | None = None) -> None:
        """Scalars of step `step` at TensorBoard step `x` (default: `step`); progress line."""
        self.scalars("", metrics, step if x is None else x)
        for key, _ in CONSOLE_KEYS:
            if key in metrics:
                self.window.setdefault(key, []).append(float(metrics[key]))
        self.window_steps += 1
        if step % self.every == 0 or step == self.total or step == self.first:
            self.console(step)

    def scalars(self, prefix: str, metrics: dict[str, float], x: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(prefix + key, value, x)

    def console(self, step: int) -> None:
        """One progress line: each value is the mean over the steps since the previous line
        (`mean of n`), so a noisy per-step figure such as tok/s does not jump line to line."""
        now = time.time()
        done = step - self.first + 1
        eta = (now - self.start) / done * (self.total - step)
        n = max(1, self.window_steps)
        parts = [f"{self.unit} {step}/{self.total}"]
        parts += [f"{short} {sum(self.window[key]) / len(self.window[key]):.4g}" for key, short in CONSOLE_KEYS
                  if self.window.get(key)]
        parts.append(f"{(now - self.window_start) / n:.2f} s/{self.unit} (mean of {n})")
        parts.append(f"eta {eta / 60:.1f}m")
        log.info(" | ".join(parts))
        self.window, self.window_steps, self.window_start = {}, 0, now

    def text(self, tag: str, text: str, step: int) -> None:
        self.writer.add_text(tag, text, step)

    def close(self) -> None:
        self.writer.flush()
        self.writer.close()


def read_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar of a run directory: tag -> [(step, value)] in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: sorted((e.step, e.value) for e in acc.Scalars(tag)) for tag in acc.Tags()["scalars"]}
