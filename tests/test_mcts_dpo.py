"""MCTS-DPO (Xie et al. 2024): PUCT, backup, pair extraction, shared-prefix masking and
visit-count label smoothing by hand; an end-to-end run with its counters and tree dump."""
import json
import math

import pytest
import torch

from rlhf.mcts import Node, Problem, Tree, backup, choose_next, completion, puct, tree_pairs, visit_label_smoothing


def three_node_tree():
    root = Node([], N=4)
    a = Node([1], root, 1, prior=0.6, Q=0.2, N=3)
    b = Node([2], root, 1, prior=0.3, Q=0.5, N=0)
    root.children = [a, b]
    return root, a, b


def test_puct_selection_by_hand():
    root, a, b = three_node_tree()
    # score = Q + c * p * sqrt(N_parent) / (1 + N): a 0.2 + 0.6*2/4 = 0.5, b 0.5 + 0.3*2/1 = 1.1
    assert puct(root, 1.0) is b
    # once b is visited often its bonus shrinks: b 0.3 + 0.3*2/11 = 0.355 < a 0.5
    b.N, b.Q = 10, 0.3
    assert puct(root, 1.0) is a


def test_backup_values_by_hand():
    root, a, b = three_node_tree()
    root.N, a.N, b.N = 0, 0, 0
    leaf = Node([3], a, 2, r=0.7)
    a.children = [leaf]
    a.r, a.Q, b.Q = 0.1, 0.0, 0.4
    backup([root, a, leaf])
    assert leaf.Q == pytest.approx(0.7) and leaf.N == 1  # r + V(leaf), V = 0
    assert a.V == pytest.approx(0.7) and a.Q == pytest.approx(0.1 + 0.7) and a.N == 1
    # root: V = sum max(1,N) Q / sum max(1,N) over all children (b unvisited weighs 1)
    assert root.V == pytest.approx((1 * 0.8 + 1 * 0.4) / 2) and root.N == 1


def test_choose_next_uses_visits_and_their_gap():
    root = Node([])
    a, b = Node([1], root, 1, N=4, Q=0.1), Node([2], root, 1, N=3, Q=0.9)
    b.children = [Node([3], b, 2, N=3), Node([4], b, 2, N=0)]  # gap 3: 3 * (3 + 1) > 4 * 1
    root.children = [a, b]
    assert choose_next(root) is b


def test_pairs_from_a_hand_built_tree():
    root = Node([])
    good = Node([10, 11, 12], root, 1, Q=0.9, N=5)
    bad = Node([10, 11, 13], root, 1, Q=-0.4, N=2)
    mid = Node([14], root, 1, Q=0.1, N=1)
    root.children = [good, mid, bad]
    tail = Node([20, 21], good, 2, Q=0.9)
    good.children = [tail]  # a single-child chain extends the completion
    tree = Tree(Problem([1, 2], [], None), root, path=[root, good, tail])
    pairs = tree_pairs(tree)
    assert len(pairs) == 1
    p = pairs[0]
    assert completion(good) == [10, 11, 12, 20, 21]
    # shared tokens 10, 11 move into the prompt: only the diverging tokens carry the loss
    assert p.prompt_ids == [1, 2, 10, 11] and p.chosen == [12, 20, 21] and p.rejected == [13]
    assert (p.visits_chosen, p.visits_rejected) == (5, 2)


def test_shared_prefix_tokens_contribute_nothing(tmp_path):
    """h computed on the full completions equals h on the tokens after the shared prefix."""
    from rlhf.preference import data as prefs
    from rlhf.preference.train import pair_batch_terms
    from tests.tiny import tiny_lm

    policy, ref = tiny_lm(seed=0), tiny_lm(seed=1)
    prompt, shared = [3, 4, 5], [6, 7, 8]
    chosen, rejected = [9, 10], [11]
    full = prefs.Pair(prompt, shared + chosen, shared + rejected)
    moved = prefs.Pair(prompt + shared, chosen, rejected)
    zeros = torch.zeros(1)
    h_full = pair_batch_terms(policy, ref, [full], zeros, zeros, 0, "dpo")
    h_moved = pair_batch_terms(policy, ref, [moved], zeros, zeros, 0, "dpo")
    assert torch.allclose(h_full.h, h_moved.h, atol=1e-5)
    assert not torch.allclose(h_full.chosen, h_moved.chosen)  # the sums differ; only h is invariant


def test_visit_count_label_smoothing():
    eps = visit_label_smoothing(torch.tensor([5.0, 0.0, 1.0]), torch.tensor([2.0, 0.0, 9.0]))
    # conf = max(1,Nw)/(max(1,Nw)+Nl): 5/7, 1/1, 1/10 -> eps = min(1 - conf, 0.5)
    assert torch.allclose(eps, torch.tensor([2 / 7, 0.0, 0.5]))


@pytest.mark.slow
def test_mcts_dpo_run_logs_counters_and_dumps_trees(train_run):
    run_dir = train_run(["algo=mcts_dpo", "env=math", "reward=verifier", "env.sft.epochs=1",
                         "model.sft.demonstrations=2000", "algo.iterations=2", "algo.problems=4", "algo.n_iters=2",
                         "algo.dump_trees=2", "algo.filter=false", "algo.self_eval=policy", "eval.prompts=8",
                         "eval.every=1"], "mcts")
    from tests.conftest import read_scalars

    scalars = read_scalars(run_dir)
    for tag in ("mcts/trees", "mcts/nodes_per_problem", "mcts/acceptance_rate", "timing_s/per_tree",
                "dpo/pairs", "eval/accuracy"):
        assert tag in scalars, tag
    assert [x for x, _ in scalars["eval/accuracy"]] == [0, 1, 2]
    trees = json.loads((run_dir / "trees" / "iteration_001.json").read_text())
    assert len(trees) == 2 and {"prompt", "selected", "correct", "tree"} <= set(trees[0])
    assert math.isfinite(trees[0]["tree"]["V"])


class _Tok:
    """Words are single tokens: id = index in WORDS (0 = EOS/pad)."""
    WORDS = ["<eos>", "B", " B", "A", " A", "x", "correct", "incorrect", "(B", "(A"]
    eos_token_id = pad_token_id = 0

    def encode(self, text, add_special_tokens=False):
        return [self.WORDS.index(text)] if text in self.WORDS else [5, 5]

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.WORDS[i] for i in ids)


class _Engine:
    def __init__(self, answer):
        self.answer = answer

    def generate(self, prompts, sampling):
        from rlhf.rollout.engine import Completion
        return [Completion(list(self.answer), [0.0] * len(self.answer), "stop") for _ in prompts]


class _Policy(torch.nn.Module):
    """Logits that put probability 0.8 on " B" and 0.2 on " A" everywhere."""

    def forward(self, input_ids, attention_mask, position_ids, use_cache):
        logits = torch.full((*input_ids.shape, len(_Tok.WORDS)), -1e9)
        logits[..., 2], logits[..., 4] = math.log(0.8), math.log(0.2)
        return type("Out", (), {"logits": logits})()


def test_policy_self_evaluation_reads_the_probability_of_correct():
    from rlhf.mcts import PolicyJudge

    tok = _Tok()
    problem = Problem([5, 5], [" 1+1=2;", " ans 2"], None)
    judge = PolicyJudge(_Policy(), tok, _Engine([5, 2, 0]))  # "x", then " B" at the second token
    assert judge.yes == {1, 2, 6, 8} and judge.no == {3, 4, 7, 9}
    assert judge([problem], [" 1+1=2;"]) == [pytest.approx(0.8)]
    assert PolicyJudge(_Policy(), tok, _Engine([5, 5, 5, 5]))([problem], ["z"]) == [0.0]  # neither: C = 0
