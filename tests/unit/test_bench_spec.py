"""The spec bench's report: rows, the verify line, and what makes the command fail."""

from kvllama.bench.spec import PATTERN, copy_prompt, format_spec


def _report(same: bool = True, exact: bool = True) -> dict:
    rows = [{"task": t, "off_tps": 50.0, "on_tps": 60.0, "ratio": 1.2, "same_tokens": same,
             "drafted": 10, "accepted": 7} for t in ("copy, 1 stream", "pattern, 1 stream")]
    verify = {"prefix_tokens": 500, "draft": 8, "complete_s": 0.05, "verify_s": 0.06, "ratio": 1.2,
              "exact": exact}
    return {"draft": 8, "draft_model": None, "canonical": False, "rows": rows, "verify": verify}


def test_the_report_names_both_sides_every_row_and_the_verify_ratio():
    text = format_spec(_report())
    assert "against the default engine" in text
    assert "copy, 1 stream" in text and "pattern, 1 stream" in text and "7/10" in text
    assert "8-token draft on a 500-token prefix: 60.0 ms vs complete of 1 token 50.0 ms = 1.20x" in text
    assert "answer equals greedy decoding: yes" in text
    assert "NO" not in text
    assert "NO" in format_spec(_report(same=False))
    assert "greedy decoding: NO" in format_spec(_report(exact=False))
    assert "canonical decoding both sides" in format_spec({**_report(), "canonical": True})


def test_the_workloads_copy_and_continue_a_pattern():
    prompt = copy_prompt()
    text = prompt.split("Text: ")[1].split("\nCopy: ")[0]
    assert prompt.endswith(text[:80])  # the copy has begun: drafts come from the text
    assert PATTERN.endswith("4\n5\n")


def test_cached_models_are_written_once_and_never_left_half_written(tmp_path, monkeypatch):
    import pytest

    from kvllama.bench.tiny_model import cached_model

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calls = []

    def write(out):
        calls.append(out)
        out.write_bytes(b"gguf")

    first = cached_model("m.gguf", write)
    assert cached_model("m.gguf", write) == first and len(calls) == 1 and first.read_bytes() == b"gguf"

    def broken(out):
        out.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        cached_model("other.gguf", broken)
    assert sorted(p.name for p in first.parent.iterdir()) == ["m.gguf"]
