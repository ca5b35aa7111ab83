"""The content-addressed cache says before a first build roughly how long it will take."""
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
