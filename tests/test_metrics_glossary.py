"""docs/metrics.md documents every scalar tag the framework logs to TensorBoard.

Two checks:
* static: every metric tag written as a string literal in the source (dict keys, `metrics[...] =`
  assignments, `logger.scalars(prefix, {...})`, f-strings turned into patterns with <placeholders>;
  keys returned by evaluation functions get the `eval/` prefix the harness gives them) must match
  an entry of the glossary. Tags built entirely at run time (e.g. `key.replace("dpo/", "dpo_step/")`,
  `{k.split("/", 1)[1]: v ...}`) are not seen here; the glossary lists them by hand. NOT_LOGGED
  names the few metric-shaped strings that never reach TensorBoard.
* runtime: a 2-step run of algo=p3o and algo=ppo logs only documented tags, with the values the
  glossary promises (optimizer/lr = algo.lr, objective/entropy > 0, eval/* at x = 0 and x = 2,
  no ensemble/* with a single reward model).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLOSSARY = ROOT / "docs" / "metrics.md"
SOURCES = ("rlhf", "envs")  # envs/: Mario's episode metrics are named there
TAG_RE = re.compile(r"^[a-z_0-9]+/[A-Za-z_0-9@/<>{}.-]+$")  # a tag with a prefix: "objective/kl", "env/<env>/gold"
KEY_RE = re.compile(r"^[A-Za-z_0-9@/<>.-]+$")  # a key an evaluation function returns (logged as eval/<key>)
PLACEHOLDER = re.compile(r"<[^<>]*>")
# Names of the dicts an evaluation function returns its metrics in (others hold records, tables, specs).
EVAL_DICTS = {"metrics", "final", "flat", "out"}
# Files whose metrics reach TensorBoard only through an evaluation (value-guided search: eval/search/*).
EVAL_FILES = {"rlhf/search.py"}
# Metric-shaped names in the source that are never written to TensorBoard.
NOT_LOGGED = {
    "sft/loss": "rlhf/warmstart.py: sft_train returns it, the cache build discards it",
    "sft/steps": "rlhf/warmstart.py: as sft/loss",
    "loss/extra": "rlhf/control_ppo.py: C-MORL renames it to cmorl/barrier_loss before logging",
}


# --- static extraction ---------------------------------------------------------------------------------

def text_of(node: ast.AST) -> str | None:
    """A string constant as is; an f-string with each {expression} as <expression>; else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                parts.append("<" + re.sub(r"\W+", "_", ast.unparse(value.value)).strip("_") + ">")
        return "".join(parts)
    return None


def is_eval_function(name: str) -> bool:
    """What the harness (or `python -m rlhf.evaluate`) logs under eval/: Job.evaluate, a module's
    evaluate(), evaluate_policy, evaluate_games, sampled_eval, ..."""
    return name == "evaluate" or name.startswith("evaluate_") or name.endswith("_eval")


class TagCollector(ast.NodeVisitor):
    def __init__(self, where: str):
        self.where = where
        self.tags: dict[str, str] = {}  # tag or pattern -> file:line
        self.functions: list[str] = []
        self.prefix = "eval/" if where in EVAL_FILES else ""

    def add(self, text: str | None, node: ast.AST, prefix: str = "") -> None:
        if text is None:
            return
        in_eval = any(is_eval_function(f) for f in self.functions)
        if in_eval and KEY_RE.match(text):
            self.tags.setdefault("eval/" + prefix + text, f"{self.where}:{node.lineno}")
        elif not in_eval and TAG_RE.match(prefix + text):
            self.tags.setdefault(self.prefix + prefix + text, f"{self.where}:{node.lineno}")

    def visit_FunctionDef(self, node):
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    def eval_target(self, node: ast.AST) -> bool:
        """Inside an evaluation function, only the dicts named in EVAL_DICTS are metrics."""
        return not any(is_eval_function(f) for f in self.functions) or (
            isinstance(node, ast.Name) and node.id in EVAL_DICTS)

    def dict_keys(self, node: ast.AST, prefix: str = "") -> None:
        if isinstance(node, ast.Dict):
            values = [text_of(v) for v in node.values]
            if values and all(v is not None and TAG_RE.match(v) for v in values):  # a renaming table: its values
                for v, value_node in zip(values, node.values):
                    self.add(v, value_node, prefix)
                return
            for key, value in zip(node.keys, node.values):
                if key is not None:
                    self.add(text_of(key), key, prefix)
                else:  # {**{f"chosen/{n}": ...}, ...}
                    self.dict_keys(value, prefix)
        elif isinstance(node, ast.DictComp):
            self.add(text_of(node.key), node.key, prefix)

    def visit_Dict(self, node):
        if not any(is_eval_function(f) for f in self.functions):
            self.dict_keys(node)
        self.generic_visit(node)

    def visit_DictComp(self, node):
        if not any(is_eval_function(f) for f in self.functions):
            self.dict_keys(node)
        self.generic_visit(node)

    def visit_Assign(self, node):
        for target in node.targets:
            if isinstance(target, ast.Subscript) and self.eval_target(target.value):
                self.add(text_of(target.slice), target)  # metrics["objective/kl"] = ...
            elif any(is_eval_function(f) for f in self.functions) and self.eval_target(target):
                self.dict_keys(node.value)  # metrics = {...} in an evaluation function
        self.generic_visit(node)

    def visit_Return(self, node):
        if node.value is not None and any(is_eval_function(f) for f in self.functions):
            self.dict_keys(node.value)
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        if isinstance(func, ast.Attribute):
            if func.attr == "scalars" and len(node.args) >= 2:  # logger.scalars("bon/", {"kl": ...}, x)
                prefix = text_of(node.args[0])
                if prefix is not None:
                    self.dict_keys(node.args[1], prefix)
            elif func.attr == "add_scalar" and node.args:
                self.add(text_of(node.args[0]), node)
            elif func.attr == "setdefault" and node.args and self.eval_target(func.value):
                self.add(text_of(node.args[0]), node)  # metrics.setdefault("objective/entropy", ...)
            elif func.attr == "update" and node.args and any(is_eval_function(f) for f in self.functions) \
                    and self.eval_target(func.value):
                self.dict_keys(node.args[0])  # metrics.update({...}) in an evaluation function
        self.generic_visit(node)


def source_tags() -> dict[str, str]:
    tags: dict[str, str] = {}
    for top in SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            collector = TagCollector(str(path.relative_to(ROOT)))
            collector.visit(ast.parse(path.read_text(), filename=str(path)))
            for tag, where in collector.tags.items():
                if tag not in NOT_LOGGED:
                    tags.setdefault(tag, where)
    return tags


# --- the glossary ---------------------------------------------------------------------------------------

def documented() -> list[str]:
    """Every tag of the glossary: the first `code span` of each list entry."""
    entries = re.findall(r"^\s*[-*] `([^`]+)`", GLOSSARY.read_text(), flags=re.M)
    assert entries, f"{GLOSSARY} lists no tags"
    return entries


def pattern_regex(pattern: str, placeholder: str) -> re.Pattern:
    parts = PLACEHOLDER.split(pattern)
    return re.compile(placeholder.join(re.escape(p) for p in parts))


def covered(tag: str, entries: list[str]) -> bool:
    """A concrete tag (a logged one, or a plain literal in the source): some entry matches it,
    an entry's <placeholder> standing for one path segment. A pattern from an f-string: an entry
    is at least as general (`env/<env>/<component>` for f"env/{self.env_name}/{component}"), or
    the entry is one of its values (`composite/praise` for f"composite/{key}"); its own
    placeholders may span segments (f"{prefix}pass@{k}" -> `eval/sampled/pass@<k>`). The second
    rule is lenient: one documented value covers the whole pattern."""
    instance = PLACEHOLDER.sub("x", tag)
    for entry in entries:
        if pattern_regex(entry, "[^/]+").fullmatch(instance):
            return True
        if PLACEHOLDER.search(tag) and pattern_regex(tag, ".+").fullmatch(PLACEHOLDER.sub("x", entry)):
            return True
    return False


def test_glossary_entries_are_tags():
    for entry in documented():
        assert re.fullmatch(r"[a-z_0-9]+(/[A-Za-z_0-9@<>.-]+)+", entry), f"not a tag: {entry!r}"
    dupes = sorted({e for e in documented() if documented().count(e) > 1})
    assert not dupes, f"listed twice in {GLOSSARY.name}: {dupes}"


def test_every_tag_in_the_source_is_documented():
    entries = documented()
    tags = source_tags()
    assert len(tags) > 100, f"the extraction found only {len(tags)} tags"
    missing = {tag: where for tag, where in sorted(tags.items()) if not covered(tag, entries)}
    assert not missing, f"tags missing from {GLOSSARY.relative_to(ROOT)}:\n" + "\n".join(
        f"  {tag}  ({where})" for tag, where in missing.items())


# --- a real run -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("algo", ["p3o", "ppo"])
def test_logged_tags_are_documented(tmp_path, algo):
    import torch
    from conftest import SMALL

    from rlhf.config import compose
    from rlhf.logger import read_scalars
    from rlhf.train import run

    # SMALL's cached warm start and reward model; few prompts and one epoch keep it short, and one
    # torch thread: on a loaded 2-core machine two threads spin-wait on each other (5x slower)
    cfg = compose([f"algo={algo}", "reward=rm", "train.steps=2", *SMALL, "train.prompts_per_step=2",
                   "eval.prompts=2", "algo.epochs=1", "threads=1"])
    threads = torch.get_num_threads()
    try:
        run(cfg, tmp_path / algo)
    finally:
        torch.set_num_threads(threads)  # run() sets the process's threads
    scalars = read_scalars(tmp_path / algo)
    entries = documented()
    missing = sorted(tag for tag in scalars if not covered(tag, entries))
    assert not missing, f"algo={algo} logged tags missing from {GLOSSARY.name}: {missing}"
    assert [v for _, v in scalars["optimizer/lr"]] == pytest.approx([float(cfg.algo.lr)] * 2)
    assert all(v > 0 for _, v in scalars["objective/entropy"])
    evals = [tag for tag in scalars if tag.startswith("eval/")]
    assert {"eval/gold", "eval/kl", "eval/proxy"} <= set(evals)
    for tag in evals:  # eval.at_start, then the final evaluation
        assert [x for x, _ in scalars[tag]] == [0, 2], tag
    assert not [tag for tag in scalars if tag.startswith("ensemble/")], "one reward model logs no ensemble/*"
    train = [tag for tag in scalars if not tag.startswith("eval/")]
    for tag in train:  # every training tag at every step
        assert [x for x, _ in scalars[tag]] == [1, 2], tag
