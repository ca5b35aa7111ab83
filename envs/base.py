"""The environment interface every text environment keeps (docs/layout.md, contract 3).

A text environment is a (possibly multi-turn) episode over strings:

    observation = env.reset(seed)                      # the prompt
    observation, reward, done, info = env.step(action_text)

`reward` is a float or a dict of named components. Environments that score with a
"gold" function put it under the key "gold" so that every algorithm can log it next to
the reward it optimizes. Single-turn environments are done after one step.

Non-text environments (Mario, multi-objective control) are plain Gymnasium envs and do
not use this class.
"""
from __future__ import annotations

from typing import Any, Callable

Reward = float | dict[str, float]


class TextEnv:
    """Base class: subclasses implement reset/step and, for SFT warm starts, demonstrations."""

    name: str = "base"
    max_turns: int = 1
    eval_temperature: float = 1.0  # evaluation's sampling temperature when eval.temperature is null
    has_steps: bool = False  # responses are reasoning steps (an instance `splitter` delimits them)

    def reset(self, seed: int) -> str:
        raise NotImplementedError(f"{type(self).__name__} must implement reset(seed)")

    def step(self, action_text: str) -> tuple[str | None, Reward, bool, dict[str, Any]]:
        raise NotImplementedError(f"{type(self).__name__} must implement step(action_text)")

    def allowed_actions(self) -> list[str] | None:
        """The answers the policy may give now (the runner then decodes constrained to them),
        or None for free text (the default)."""
        return None

    # --- what the warm start needs -------------------------------------------------------
    def corpus(self, n: int, seed: int) -> list[str]:
        """Text to train the tokenizer on (prompts and responses)."""
        return [p + r for p, r in self.demonstrations(n, seed)]

    def demonstrations(self, n: int, seed: int) -> list[tuple[str, str]]:
        """(prompt, response) pairs for the SFT warm start."""
        raise NotImplementedError(f"{type(self).__name__} has no demonstrations for SFT")

    def fingerprint(self) -> dict[str, Any]:
        """Everything that determines this env's data; part of warm-start cache keys."""
        return {"name": self.name}


_REGISTRY: dict[str, Callable[..., TextEnv]] = {}


def register(name: str):
    """Class decorator: `@register("text")` makes the env selectable with `env=text`."""

    def wrap(cls):
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return wrap


def registered() -> list[str]:
    _import_builtin_envs()
    return sorted(_REGISTRY)


def env_settings(env_cfg) -> dict[str, Any]:
    """An env config section minus what selects the env (its name and kind): the keyword
    arguments of its constructor."""
    return {k: v for k, v in env_cfg.items() if k not in ("name", "kind")}


class EnvConfigError(ValueError):
    """A bad environment setting, found before any work started (the CLI prints it as a
    config error and exits with status 2)."""


def env_class(name: str) -> type:
    _import_builtin_envs()
    if name not in _REGISTRY:
        raise ValueError(f"unknown env '{name}'; valid choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def make(name: str, **kwargs) -> TextEnv:
    _import_builtin_envs()
    if name not in _REGISTRY:
        raise ValueError(f"unknown env '{name}'; valid choices: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](**kwargs)


def _import_builtin_envs() -> None:
    # Importing the modules runs their @register decorators.
    import envs.alfworld  # noqa: F401
    import envs.code  # noqa: F401
    import envs.games  # noqa: F401
    import envs.math  # noqa: F401
    import envs.text  # noqa: F401
