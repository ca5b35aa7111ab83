"""The warm start's tokenizer encodes the same after a save and reload as when SFT trained."""
from agents.models import load_tokenizer
from rlhf.warmstart import train_tokenizer


def test_reloaded_tokenizer_encodes_like_the_trained_one(tmp_path):
    texts = [f"A {a} B {b} : {a}*x+{b}" for a in range(10) for b in range(10)] * 20
    texts += [f" {a}+{b}={(a + b) % 10}; ans {b}" for a in range(10) for b in range(10)] * 20
    trained = train_tokenizer(texts, 300)
    trained.save_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "qwen2"}')  # what a saved warm start holds too
    reloaded = load_tokenizer(tmp_path)
    for text in ("A 7 B 3 :", " 7+5=2; 2+9=1; ans 4", "review: we stayed at the inn."):
        assert reloaded(text, add_special_tokens=False)["input_ids"] == trained(text, add_special_tokens=False)["input_ids"]
    assert reloaded.padding_side == "left" and reloaded.pad_token_id is not None


def test_multi_turn_sft_trains_only_the_actions_laid_out_as_a_rollout():
    """encode_turns: each piece encoded on its own (the multi-turn runner's layout), EOS after
    each action, and only action tokens (and their EOS) trained; sft_train learns from them."""
    import torch
    from omegaconf import OmegaConf

    from agents.models import build_tiny_lm, lm_forward, pad_right
    from rlhf.functional import token_logprobs
    from rlhf.warmstart import encode_turns, sft_train

    colours = ["red", "blue", "green", "pink", "grey"]  # observation words never used by an action
    rooms = [f"here a {c} lamp and a {d} sofa.\nAction:" for c in colours for d in colours]
    tok = train_tokenizer(rooms * 4 + [" go to shelf 3", " take key 1", "\nNothing happens.\nAction:"] * 20, 200)
    demos = [[(room, False), (" go to shelf 3", True), ("\nNothing happens.\nAction:", False), (" take key 1", True)]
             for room in rooms]
    (ids, trains), eos = encode_turns(tok, demos[:1])[0], tok.eos_token_id
    pieces = [tok(text, add_special_tokens=False)["input_ids"] for text, _ in demos[0]]
    assert ids == pieces[0] + pieces[1] + [eos] + pieces[2] + pieces[3] + [eos]
    assert trains == [False] * len(pieces[0]) + [True] * (len(pieces[1]) + 1) + [False] * len(pieces[2]) + \
        [True] * (len(pieces[3]) + 1)

    cfg = OmegaConf.create({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1, "num_attention_heads": 2,
                            "num_key_value_heads": 1, "max_position_embeddings": 128, "tie_word_embeddings": True})
    torch.manual_seed(0)
    model = build_tiny_lm(cfg, tok)
    grads = []  # d loss / d logits of the one SFT step below

    def keep_grad(_module, _inputs, logits):
        logits.register_hook(grads.append)

    model.lm_head.register_forward_hook(keep_grad)
    sft_train(model, tok, None, OmegaConf.create({"epochs": 1, "batch_size": 25, "lr": 1e-3}), 0, lambda *_: None,
              turns=demos)
    batch, mask = pad_right([i for i, _ in encode_turns(tok, demos)], tok.pad_token_id)
    trains = pad_right([[int(x) for x in t] for _, t in encode_turns(tok, demos)], 0)[0].bool()
    # logits at position t - 1 predict token t: a token carries loss iff its predicting row has a gradient
    touched = grads[0].abs().sum(-1)[:, :-1] > 0  # [batch, T - 1]; the one batch holds every demonstration, shuffled
    assert len(grads) == 1 and int(touched.sum()) == int(trains[:, 1:].sum()) > 0
    assert sorted(touched.sum(1).tolist()) == sorted(trains[:, 1:].sum(1).tolist())


def test_sft_loss_on_actions_is_refused_for_an_env_without_multi_turn_demonstrations(tmp_path):
    import pytest

    from envs import base as env_base
    from rlhf.config import ConfigError, compose
    from rlhf.warmstart import warm_start_policy

    cfg = compose(["model.sft.loss_on=actions", f"cache_dir={tmp_path}"])
    env = env_base.make("text", split="train")
    with pytest.raises(ConfigError, match="loss_on='actions'.*valid choices for env=text: all$"):
        warm_start_policy(cfg, env)
    assert not any(tmp_path.iterdir())  # refused before anything was built
