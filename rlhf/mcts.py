"""Monte Carlo tree search over reasoning steps (Xie et al. 2024, "Monte Carlo Tree Search Boosts
Reasoning via Iterative Preference Learning", section 2 and the authors' search code).

A node is a state (problem + steps so far); its action is the step that led to it.

    select   descend by PUCT: Q(c) + c_puct * p(c) * sqrt(N(parent)) / (1 + N(c)),
             prior p = exp(sum log pi(step) / len^length_penalty)
    expand   k candidate steps (n_init_actions at the root, n_actions deeper; at the last allowed
             depth one forced step that must finish), deduplicated, at most breadth_limit
    evaluate R(child) = w_conf * C / max(d - 3, 1) [+ w_outcome * O if terminal], d the parent's
             depth; C = stepwise self-evaluation in [0, 1] (if C == 0, R = R(parent) [+ O]);
             O = +1 / -1 by the verifier; r = R(child) - R(parent); Q(child) = V(parent) + r
    descend  through the freshly expanded children by PUCT until a terminal or the depth limit
    backup   leaf.Q = r + V(leaf); upwards V(n) = sum_c max(1,N_c) Q_c / sum_c max(1,N_c),
             N += 1, Q(n) = r(n) + V(n)  (gamma = 1)

Per problem: 4 x n_iters iterations at the root, then n_iters from each chosen child (argmax of
N_c * (visit gap among c's children + 1), ties by Q then V), re-rooting until a terminal step.
All problems search in lockstep, and every expansion of one round is a single batched engine
call (all nodes at that point across problems), so `rollout=vllm` gets large batches.

Self-evaluation (`self_eval`): `hinted` -- the share of the partial solution's steps that equal
the reference solution's (the stand-in for the paper's answer-hinted self-check on a toy task);
`policy` -- the policy's own A/B judgement of the step given the reference answer, C = its
probability of "correct" (token ids from the tokenizer; C = 0 when it answers neither);
`none` -- C = 0 (outcome only: the ablation).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch

from rlhf.rollout.engine import SamplingParams
from rlhf.search import cut_at_step

SELF_EVALS = ("hinted", "policy", "none")


@dataclass
class Node:
    action: list[int]  # the step's token ids ([] at the root)
    parent: "Node | None" = None
    depth: int = 0  # steps from the root
    logp: float = 0.0  # sum of the step's log-probs under the search policy
    prior: float = 1.0
    R: float = 0.0  # evaluation score of this state
    r: float = 0.0  # immediate reward R - R(parent)
    Q: float = 0.0
    V: float = 0.0
    N: int = 0
    terminal: bool = False
    correct: bool | None = None  # the verifier's outcome at a terminal step
    children: list["Node"] = field(default_factory=list)

    def prefix(self) -> list[int]:
        """Token ids of every step from the root to this node."""
        return (self.parent.prefix() if self.parent else []) + self.action

    def to_json(self, tokenizer) -> dict:
        return {"step": tokenizer.decode(self.action), "N": self.N, "Q": round(self.Q, 4), "V": round(self.V, 4),
                "R": round(self.R, 4), "prior": round(self.prior, 4), "terminal": self.terminal,
                "correct": self.correct, "children": [c.to_json(tokenizer) for c in self.children]}


@dataclass
class Problem:
    prompt_ids: list[int]
    reference_steps: list[str]  # the reference solution split into steps (the hinted check)
    verify: object  # callable(solution text) -> bool


@dataclass
class Tree:
    problem: Problem
    root: Node
    path: list[Node] = field(default_factory=list)  # the selected path, root first
    nodes: int = 1
    tokens: int = 0  # generated step tokens

    @property
    def correct(self) -> bool:
        return bool(self.path and self.path[-1].terminal and self.path[-1].correct)


def puct(parent: Node, c_puct: float) -> Node:
    return max(parent.children, key=lambda c: c.Q + c_puct * c.prior * math.sqrt(parent.N) / (1 + c.N))


def backup(path: list[Node]) -> None:
    leaf = path[-1]
    leaf.Q, leaf.N = leaf.r + leaf.V, leaf.N + 1
    for node in reversed(path[:-1]):
        weights = [max(1, c.N) for c in node.children]
        node.V = sum(w * c.Q for w, c in zip(weights, node.children)) / sum(weights)
        node.N += 1
        if node is not path[0]:
            node.Q = node.r + node.V


def choose_next(node: Node) -> Node:
    """The step taken after searching from `node` (mcts temperature 0)."""
    def gap(c):
        return (max(g.N for g in c.children) - min(g.N for g in c.children)) if c.children else 0
    return max(node.children, key=lambda c: (c.N * (gap(c) + 1), c.Q, c.V))


class StepSearch:
    def __init__(self, engine, tokenizer, splitter, settings, judge=None):
        self.engine, self.tokenizer, self.splitter, self.s = engine, tokenizer, splitter, settings
        self.judge = judge  # rlhf.mcts.PolicyJudge for self_eval=policy
        if settings.self_eval not in SELF_EVALS:
            raise ValueError(f"self_eval={settings.self_eval} unknown; valid choices: {', '.join(SELF_EVALS)}")

    # --- evaluation of new children ------------------------------------------------------------
    def confidence(self, trees_nodes: list[tuple[Tree, Node]]) -> list[float]:
        s = self.s
        if s.self_eval == "none":
            return [0.0] * len(trees_nodes)
        texts = [self.tokenizer.decode(n.prefix(), skip_special_tokens=True) for _, n in trees_nodes]
        if s.self_eval == "policy":
            return self.judge([t.problem for t, _ in trees_nodes], texts)
        out = []
        for (tree, _), text in zip(trees_nodes, texts):
            steps = [x.strip() for x in self.splitter.split(text)]
            ref = [x.strip() for x in tree.problem.reference_steps]
            out.append(sum(a == b for a, b in zip(steps, ref)) / max(len(steps), 1))
        return out

    # --- one batched expansion of many leaves ---------------------------------------------------
    def expand(self, leaves: list[tuple[Tree, Node]]) -> None:
        s, eos = self.s, self.tokenizer.eos_token_id
        step_sampling = SamplingParams(temperature=float(s.temperature), max_new_tokens=int(s.max_step_tokens),
                                       stop_strings=self.splitter.stop_strings)
        final_sampling = SamplingParams(temperature=float(s.temperature), max_new_tokens=int(s.max_final_tokens))
        requests = []  # (tree, leaf, forced final)
        for tree, leaf in leaves:
            forced = leaf.depth >= int(s.depth_limit) - 1
            k = 1 if forced else (int(s.n_init_actions) if leaf.depth == 0 else int(s.n_actions))
            requests += [(tree, leaf, forced)] * k
        completions = [None] * len(requests)
        for forced, sampling in ((False, step_sampling), (True, final_sampling)):
            index = [i for i, (_, _, f) in enumerate(requests) if f == forced]
            if index:
                prompts = [requests[i][0].problem.prompt_ids + requests[i][1].prefix() for i in index]
                for i, c in zip(index, self.engine.generate(prompts, sampling)):
                    completions[i] = c
        new: list[tuple[Tree, Node]] = []
        for (tree, leaf, forced), c in zip(requests, completions):
            ids, logps = (c.token_ids, c.logprobs) if forced else cut_at_step(self.tokenizer, c.token_ids, c.logprobs,
                                                                            self.splitter)
            if not ids or any(ids == ch.action for ch in leaf.children) or len(leaf.children) >= int(s.breadth_limit):
                continue
            tree.tokens += len(ids)
            too_long = len(tree.problem.prompt_ids) + len(leaf.prefix()) + len(ids) >= int(s.max_length) - 5
            child = Node(ids, leaf, leaf.depth + 1, sum(logps),
                         prior=math.exp(sum(logps) / len(ids) ** float(s.length_penalty)),
                         terminal=ids[-1] == eos or forced or too_long)
            leaf.children.append(child)
            tree.nodes += 1
            new.append((tree, child))
        for (tree, child), conf in zip(new, self.confidence(new)):
            parent = child.parent
            outcome = 0.0
            if child.terminal:
                text = self.tokenizer.decode(child.prefix(), skip_special_tokens=True)
                child.correct = bool(tree.problem.verify(text))
                outcome = float(s.w_outcome) * (1.0 if child.correct else -1.0)
            base = parent.R if conf == 0 else float(s.w_conf) * conf / max(parent.depth - 3, 1)
            child.R = base + outcome
            child.r = child.R - parent.R
            child.Q = parent.V + child.r

    # --- the search -----------------------------------------------------------------------------
    def iterate(self, trees: list[Tree], cursors: list[Node]) -> None:
        """One MCTS iteration in every tree, from its cursor (the current search root)."""
        s, limit = self.s, int(self.s.depth_limit)
        paths = []
        for cursor in cursors:
            path = [cursor]
            while path[-1].children and not path[-1].terminal and path[-1].depth - cursor.depth < limit:
                path.append(puct(path[-1], float(s.c_puct)))
            paths.append(path)
        while True:
            open_ = [(t, p) for t, p in zip(trees, paths)
                     if not p[-1].terminal and not p[-1].children and p[-1].depth - p[0].depth < limit]
            if not open_:
                break
            self.expand([(t, p[-1]) for t, p in open_])
            progressed = False
            for _, p in open_:
                if p[-1].children:
                    p.append(puct(p[-1], float(s.c_puct)))
                    progressed = True
                else:
                    p[-1].terminal = True  # nothing survived: the step "EOS" ends the branch
            if not progressed:
                break
        for path in paths:
            backup(path)

    def search(self, problems: list[Problem]) -> tuple[list[Tree], dict[str, float]]:
        start = time.time()
        trees = [Tree(p, Node([])) for p in problems]
        for t in trees:
            t.path = [t.root]
        active = list(trees)
        first = True
        while active:
            for _ in range(int(self.s.n_iters) * (int(self.s.root_iters_factor) if first else 1)):
                self.iterate(active, [t.path[-1] for t in active])
            first = False
            for t in active:
                node = t.path[-1]
                if node.children:
                    t.path.append(choose_next(node))
                else:
                    node.terminal = True
            active = [t for t in active if not t.path[-1].terminal]
        seconds = time.time() - start
        stats = {"mcts/trees": float(len(trees)), "mcts/nodes_per_problem": sum(t.nodes for t in trees) / len(trees),
                 "mcts/tokens_per_problem": sum(t.tokens for t in trees) / len(trees),
                 "mcts/correct_rate": sum(t.correct for t in trees) / len(trees),
                 "timing_s/per_tree": seconds / max(len(trees), 1)}
        return trees, stats


# --- step-level preference pairs ----------------------------------------------------------------------

@dataclass
class StepPair:
    prompt_ids: list[int]  # problem + shared prefix (the path up to the node, plus common tokens)
    chosen: list[int]
    rejected: list[int]
    visits_chosen: int
    visits_rejected: int


def completion(node: Node) -> list[int]:
    """The node's step plus its descendants' while each has exactly one child."""
    ids = list(node.action)
    while len(node.children) == 1:
        node = node.children[0]
        ids += node.action
    return ids


def tree_pairs(tree: Tree, max_pairs: int = 8) -> list[StepPair]:
    """At each node of the selected path with >= 2 children: highest- vs lowest-Q child."""
    pairs = []
    for node in tree.path:
        if len(node.children) < 2 or len(pairs) >= max_pairs:
            continue
        ranked = sorted(node.children, key=lambda c: (c.Q, c.prior, c.r, c.R, c.N))
        best, worst = ranked[-1], ranked[0]
        a, b = completion(best), completion(worst)
        if a == b:
            continue
        k = 0
        while k < min(len(a), len(b)) and a[k] == b[k]:  # shared tokens move into the prompt
            k += 1
        pairs.append(StepPair(tree.problem.prompt_ids + node.prefix() + a[:k], a[k:], b[k:], best.N, worst.N))
    return pairs


def visit_label_smoothing(visits_chosen: torch.Tensor, visits_rejected: torch.Tensor) -> torch.Tensor:
    """cDPO's label noise from visit counts: conf = max(1,N_w) / (max(1,N_w) + N_l),
    eps = min(1 - conf, 0.5)."""
    nw = visits_chosen.clamp(min=1).float()
    conf = nw / (nw + visits_rejected.float())
    return (1 - conf).clamp(max=0.5)


class PolicyJudge:
    """The policy's own step check (C of the paper's self-evaluation): the question, the
    reference answer, the proposed partial solution and "(A) incorrect (B) correct ... The
    answer is"; C = the probability mass on the "correct" answers at the first answer token of
    a 4-token greedy continuation, 0 if it names neither."""

    YES, NO = ("B", " B", "(B", "correct", " correct", "Correct"), ("A", " A", "(A", "incorrect", " incorrect", "wrong")

    def __init__(self, policy, tokenizer, engine):
        self.policy, self.tokenizer, self.engine = policy, tokenizer, engine
        single = lambda words: {ids[0] for w in words if len(ids := tokenizer.encode(w, add_special_tokens=False)) == 1}  # noqa: E731
        self.yes, self.no = single(self.YES), single(self.NO) - single(self.YES)

    @torch.no_grad()
    def __call__(self, problems: list[Problem], partials: list[str]) -> list[float]:
        from agents.models import lm_forward, pad_right

        prompts = [self.tokenizer.decode(p.prompt_ids) + f"\nEXAMPLE ANSWER: {''.join(p.reference_steps)}\n"
                   f"PROPOSED SOLUTION: {z}\nIs the proposed solution heading in the correct direction? "
                   "(A) incorrect (B) correct\nThe answer is" for p, z in zip(problems, partials)]
        ids = [self.tokenizer.encode(t, add_special_tokens=False) for t in prompts]
        outs = self.engine.generate(ids, SamplingParams(temperature=0.0, max_new_tokens=4))
        out = []
        for prompt, c in zip(ids, outs):
            at = next((i for i, t in enumerate(c.token_ids) if t in self.yes | self.no), None)
            if at is None:
                out.append(0.0)
                continue
            seq = prompt + c.token_ids[:at + 1]
            x, mask = pad_right([seq], self.tokenizer.pad_token_id)
            probs = torch.softmax(lm_forward(self.policy, x, mask)[0, len(prompt) + at - 1].float(), -1)
            out.append(float(probs[list(self.yes)].sum()))
        return out
