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
