"""`launcher=ray`: rollout workers as Ray actors, the trainer as the single controller.

    trainer (driver) ──run(seeds)──► chunks of seeds ──► RolloutWorker actors (placement group)
          ▲                                               each: policy copy + engine + envs
          └──── episodes, in seed order ◄─── gather ◄────┘
    trainer ──sync(params, version)──► ray.put once ──► every worker loads the same object

Like OpenRLHF's actor groups, the controller is a plain Python loop that calls methods on a
group of actors; unlike it, the trainer stays in the driver process (one trainer; the workers
are what scales). Algorithms never import Ray.

Determinism: every chunk samples from an RNG seeded by its prompt seeds (rlhf.launch.local),
so a Ray run equals `launcher=local launcher.chunk_episodes=<same chunk size>` bit for bit
(HF engine), whichever worker ran each chunk and however often it was re-run.

Fault tolerance: workers are created with `max_restarts`. When a call fails because its
worker died, the controller waits for Ray to restart it, loads the current weights into it,
and runs the lost chunk again. Results are kept per chunk, so no episode is lost or counted
twice.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import ray
import torch
from omegaconf import OmegaConf
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf.launch.local import RolloutBackend, build_envs, build_runner, chunk_bounds, chunk_rng_seed, run_chunk
from rlhf.rollout.engine import score_with_model
from rlhf.rollout.factory import make_engine
from rlhf.rollout.runner import Episode

log = logging.getLogger("rlhf")
STRATEGIES = ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD")


class RolloutWorker:
    """One actor: its own copy of the policy, an engine over it, and environment instances."""

    def __init__(self, cfg: dict, policy_dir: str, threads: int):
        from agents.models import apply_lora, load_lm, load_tokenizer

        if not Path(policy_dir).is_dir():
            raise FileNotFoundError(f"rollout worker on node {ray.get_runtime_context().get_node_id()}: the policy "
                                    f"directory {policy_dir} does not exist there. Workers load the policy by path: "
                                    "put RLHF_CACHE_DIR (or model.path) on a filesystem every node reads (docs/ray.md).")
        torch.set_num_threads(threads)
        cfg = OmegaConf.create(cfg)
        self.tokenizer = load_tokenizer(policy_dir)
        model = load_lm(policy_dir)
        if int(cfg.model.lora.rank) > 0:  # same module names as the trainer's policy, so syncs match by name
            model = apply_lora(model, cfg.model.lora)
        # Parameters keep requires_grad=True like the trainer's policy: torch takes a different CPU
        # matmul path for tensors without it, and the last bits of the log-probs would differ.
        self.engine = make_engine(cfg, model, self.tokenizer, model_dir=policy_dir)
        self.runner = build_runner(cfg, self.engine, self.tokenizer, model)
        self.cfg, self.envs = cfg, []
        self.version = -1  # no weights from the trainer yet
        self.calls, self.exit_on_call = 0, 0

    def sync(self, named_tensors: dict[str, torch.Tensor], version: int) -> int:
        self.engine.load_weights(named_tensors.items(), version=version)
        self.version = version
        return version

    def run(self, seeds: list[int], rng_seed: int, version: int) -> list[Episode]:
        if version != self.version:  # a stale worker must fail loudly, never sample silently
            raise RuntimeError(f"rollout worker holds policy version {self.version}, asked for {version}")
        if len(self.envs) < len(seeds):
            self.envs += build_envs(self.cfg, len(seeds) - len(self.envs))
        episodes = run_chunk(self.runner, self.envs, seeds, rng_seed)
        self.calls += 1
        if self.calls == self.exit_on_call:  # fault injection (tests): die with the chunk done but not returned
            os._exit(1)
        return episodes

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        return self.engine.score(sequences, prompt_lens)

    def held_version(self) -> int:
        return self.version

    def exit_on(self, call: int) -> None:
        """Test hook: the process exits during its `call`-th run (counted since it started)."""
        self.exit_on_call = call

    def node_id(self) -> str:
        return ray.get_runtime_context().get_node_id()


def connect(launcher_cfg) -> bool:
    """Join the configured cluster, or start a private Ray instance here; True when this call
    started Ray (close() then shuts it down). An already initialized Ray is used as it is."""
    if ray.is_initialized():
        return False
    address = launcher_cfg.address
    if address is None:  # "local" starts a new instance even when another one runs on this machine
        address = os.environ.get("RAY_ADDRESS") or "local"
    if address == "local":
        num_cpus = launcher_cfg.num_cpus
        ray.init(address="local", num_cpus=None if num_cpus is None else int(num_cpus), include_dashboard=False,
                 log_to_driver=bool(launcher_cfg.log_to_driver))
    else:  # the cluster's own resources and dashboard settings apply
        ray.init(address=str(address), log_to_driver=bool(launcher_cfg.log_to_driver))
    return True


class RayRollout(RolloutBackend):
    """The controller's handle on the worker group: splits seeds into chunks, gathers episodes,
    broadcasts weights, recovers dead workers."""

    def __init__(self, cfg, policy, tokenizer, policy_dir: Path, num_episodes: int):
        lc = cfg.launcher
        self.policy, self.num_episodes, self.pad_id = policy, num_episodes, tokenizer.pad_token_id
        self.num_workers = int(lc.num_workers)
        self.chunk_episodes = int(lc.chunk_episodes) or -(-num_episodes // self.num_workers)
        self.max_restarts, self.call_timeout = int(lc.max_restarts), float(lc.call_timeout_s)
        self.version, self.restarts = 0, 0
        self.started_ray = connect(lc)
        self.group = self._reserve(lc)
        worker_cls = ray.remote(RolloutWorker)
        config = OmegaConf.to_container(cfg, resolve=True)
        self.workers = [
            worker_cls.options(
                num_cpus=float(lc.cpus_per_worker), num_gpus=float(lc.gpus_per_worker),
                resources=dict(lc.resources_per_worker or {}), max_restarts=self.max_restarts, max_task_retries=0,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=i),
            ).remote(config, str(policy_dir), max(1, int(lc.cpus_per_worker)))
            for i in range(self.num_workers)]
        try:  # a worker that cannot start (e.g. policy_dir missing on its node) raises here
            self._load_all(policy.named_parameters(), version=0)  # LoRA adapters start random: copy the trainer's
        except BaseException:
            self.close()
            raise
        log.info(f"[ray] {self.num_workers} rollout workers ({lc.placement_strategy}) on nodes "
                 f"{sorted(set(self.node_ids()))}; chunks of {self.chunk_episodes} episodes")

    # --- setup ------------------------------------------------------------------------------
    def _reserve(self, lc):
        strategy = str(lc.placement_strategy)
        if strategy not in STRATEGIES:
            raise ValueError(f"launcher.placement_strategy={strategy!r} is not valid; valid choices: "
                             f"{', '.join(STRATEGIES)}")
        bundle = {"CPU": float(lc.cpus_per_worker), **{k: float(v) for k, v in (lc.resources_per_worker or {}).items()}}
        if float(lc.gpus_per_worker) > 0:
            bundle["GPU"] = float(lc.gpus_per_worker)
        group = placement_group([dict(bundle) for _ in range(self.num_workers)], strategy=strategy)
        try:  # a group that cannot fit pends forever: fail with what was asked and what exists
            ray.get(group.ready(), timeout=float(lc.placement_timeout_s))
        except GetTimeoutError:
            message = (f"launcher=ray could not reserve {self.num_workers} x {bundle} ({strategy}) within "
                       f"launcher.placement_timeout_s={lc.placement_timeout_s}; the cluster has "
                       f"{ray.cluster_resources()}. Lower launcher.num_workers / cpus_per_worker or add nodes.")
            remove_placement_group(group)
            self._shutdown()
            raise RuntimeError(message) from None
        return group

    def node_ids(self) -> list[str]:
        return ray.get([w.node_id.remote() for w in self.workers], timeout=self.call_timeout)

    # --- the backend interface ----------------------------------------------------------------
    def run(self, seeds: list[int]) -> list[Episode]:
        chunks = chunk_bounds(len(seeds), self.chunk_episodes)
        results: dict[int, list[Episode]] = {}
        attempts = {start: 0 for start, _ in chunks}
        pending = {}
        for i, (start, end) in enumerate(chunks):  # chunk i goes to worker i mod N, queued on the actor
            worker = i % self.num_workers
            pending[self._submit(worker, seeds, start, end)] = (worker, start, end)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=self.call_timeout)
            if not ready:
                raise TimeoutError(f"no rollout chunk finished within launcher.call_timeout_s={self.call_timeout}")
            worker, start, end = pending.pop(ready[0])
            try:
                results[start] = ray.get(ready[0])
            except RayActorError as err:
                attempts[start] += 1
                if attempts[start] > self.max_restarts:
                    raise RuntimeError(f"rollout chunk {start}:{end} failed {attempts[start]} times "
                                       f"(launcher.max_restarts={self.max_restarts})") from err
                log.warning(f"[ray] rollout worker {worker} died ({type(err).__name__}); "
                            f"re-running episodes {start}:{end} after its restart")
                self._recover(worker)
                pending[self._submit(worker, seeds, start, end)] = (worker, start, end)
        return [ep for start, _ in chunks for ep in results[start]]

    def _submit(self, worker: int, seeds: list[int], start: int, end: int):
        return self.workers[worker].run.remote(seeds[start:end], chunk_rng_seed(seeds[start], start), self.version)

    def _recover(self, worker: int) -> None:
        """Load the current weights into a restarted worker. While Ray restarts it (a new process
        that imports torch and loads the model: seconds), calls fail as unavailable: retry until
        launcher.call_timeout_s. Several lost chunks of one worker lead here: only the first reloads."""
        handle = self.workers[worker]
        deadline, died = time.time() + self.call_timeout, 0
        while True:
            try:
                if ray.get(handle.held_version.remote(), timeout=self.call_timeout) == self.version:
                    return
                params = {name: p.detach().cpu() for name, p in self.policy.named_parameters()}
                ray.get(handle.sync.remote(params, self.version), timeout=self.call_timeout)
                self.restarts += 1
                return
            except ActorUnavailableError:  # restarting
                if time.time() > deadline:
                    raise
            except ActorDiedError:  # no restarts left (or a death Ray reports before the restart)
                died += 1
                if died > 2:
                    raise
            time.sleep(0.5)

    def sync(self, named_params, version: int) -> None:
        """Broadcast through the object store: one `ray.put`, every worker reads the same object.
        Only trainable tensors travel (frozen ones never change; workers loaded them from disk)."""
        params = {name: p.detach().cpu() for name, p in named_params if p.requires_grad}
        self._broadcast(params, version)

    def score(self, sequences: list[list[int]], prompt_lens: list[int]) -> list[list[float]]:
        """The probe scored by every worker; returns the copy farthest from the trainer's policy,
        so the trainer's weight-sync check bounds the gap of all of them."""
        copies = ray.get([w.score.remote(sequences, prompt_lens) for w in self.workers], timeout=self.call_timeout)
        trainer = score_with_model(self.policy, sequences, prompt_lens, self.pad_id)

        def gap(copy):
            return max((abs(a - b) for row_c, row_t in zip(copy, trainer) for a, b in zip(row_c, row_t)), default=0.0)

        return max(copies, key=gap)

    def _load_all(self, named_params, version: int) -> None:
        self._broadcast({name: p.detach().cpu() for name, p in named_params}, version)

    def _broadcast(self, params: dict[str, torch.Tensor], version: int) -> None:
        ref = ray.put(params)
        ray.get([w.sync.remote(ref, version) for w in self.workers], timeout=self.call_timeout)
        self.version = version

    def close(self) -> None:
        for worker in self.workers:
            ray.kill(worker, no_restart=True)
        self.workers = []
        remove_placement_group(self.group)
        self._shutdown()

    def _shutdown(self) -> None:
        if self.started_ray:
            ray.shutdown()
