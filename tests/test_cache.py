"""The content-addressed cache: it says before a first build roughly how long it will take, and an
artifact does not depend on the thread count of the process that built it."""
from rlhf.cache import cached


def test_a_first_build_announces_an_estimate_then_reuses(tmp_path):
    lines = []
    spec = {"what": 1}
    path = cached(tmp_path, "sft", spec, lambda out: (out / "w").write_text("x"), lines.append)
    assert lines[0].startswith("[cache] building sft ") and "typically about 1 min" in lines[0]
    assert (path / "w").read_text() == "x"
    cached(tmp_path, "sft", spec, lambda out: None, lines.append)
    assert lines[-1].startswith("[cache] reusing sft")
    cached(tmp_path, "sft", {"what": 2}, lambda out: None, lines.append)
    building = [line for line in lines if line.startswith("[cache] building")]
    assert "earlier builds of this kind here took 0 s" in building[-1]  # from the first build's marker


def test_an_artifact_does_not_depend_on_the_builders_thread_count(tmp_path):
    """The same SFT warm start built by a caller running 2 torch threads and by one running 1 is the
    same to the last bit (before builds were pinned to one thread they differed by ~2.5e-5)."""
    import torch

    from agents.models import load_lm
    from envs import base as env_base
    from envs.base import env_settings
    from rlhf.config import compose
    from rlhf.warmstart import warm_start_policy

    weights, seen = [], []
    before = torch.get_num_threads()
    for threads, cache in ((2, tmp_path / "a"), (1, tmp_path / "b")):
        torch.set_num_threads(threads)
        try:
            cfg = compose(["model.sft.demonstrations=2000", "model.sft.epochs=1", f"cache_dir={cache}"])
            path = warm_start_policy(cfg, env_base.make("text", split="train", **env_settings(cfg.env)), lambda *a: None)
            seen.append(torch.get_num_threads())  # the caller's setting is back after the build
        finally:
            torch.set_num_threads(before)
        weights.append(load_lm(path).state_dict())
    assert seen == [2, 1]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
