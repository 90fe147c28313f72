"""The media layout's resume rule: every point it gives leaves the rest computed as a cold run would."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from kvllama.media.layout import (
    MediaSpan,
    PromptLayout,
    is_placeholder,
    placeholders,
    tag_short_segments,
    vocab_id,
)

MIN_ROWS = 8


def layout(n_prompt: int, *spans: tuple[int, int]) -> PromptLayout:
    media = tuple(MediaSpan(a, n, bytes([a % 256]), "image") for a, n in spans)
    return PromptLayout(media, n_prompt, MIN_ROWS)


def test_placeholders_depend_on_the_medium_and_the_position() -> None:
    a, b = placeholders(b"a" * 32, 64), placeholders(b"b" * 32, 64)
    assert len(set(a)) == 64 and all(is_placeholder(t) for t in a)
    assert sum(x == y for x, y in zip(a, b, strict=True)) <= 1
    assert a == placeholders(b"a" * 32, 64)


def test_short_segments_are_tagged_and_give_their_ids_back() -> None:
    spans = (MediaSpan(5, 4, b"x", "image"),)
    tokens = [1, 2, 3, 4, 5, *placeholders(b"x", 4), *range(10, 30)]
    tagged = tag_short_segments(tokens, spans, MIN_ROWS)
    assert all(t < 0 for t in tagged[:5])  # 5 text tokens before the image: short
    assert [vocab_id(t) for t in tagged[:5]] == [1, 2, 3, 4, 5]
    assert tagged[9:] == tuple(range(10, 30))  # 20 after it: a long segment, as they are
    assert tag_short_segments([1, 2, 3], (), MIN_ROWS) == (1, 2, 3)  # no media, nothing tagged


def test_resume_points() -> None:
    # [0,5) short text, [5,69) image, [69,100) long text
    lay = layout(100, (5, 64))
    assert lay.resume_point(3) == 0  # inside the short segment: from its start
    assert lay.resume_point(5) == 0  # at its end: the short chunk would be computed again alone
    assert lay.resume_point(40) == 0  # inside the image: before it, and the short text before it
    assert lay.resume_point(69) == 69  # right after the image
    assert lay.resume_point(90) == 90
    assert lay.resume_point(95) == 92  # leave a canonical chunk of the last segment
    # [0,20) long text, [20,84) image, [84,90) short tail
    lay = layout(90, (20, 64))
    assert lay.resume_point(20) == 20  # the long segment whole, right before the image
    assert lay.resume_point(16) == 12  # not 8 rows left before the image
    assert lay.resume_point(50) == 20
    assert lay.resume_point(88) == 84  # the short tail from its start


@st.composite
def layouts(draw: st.DrawFn) -> PromptLayout:
    pos, spans = 0, []
    for _ in range(draw(st.integers(1, 4))):
        pos += draw(st.integers(0, 30))
        n = draw(st.integers(1, 40))
        spans.append((pos, n))
        pos += n
    return layout(pos + draw(st.integers(1, 30)), *spans)


@given(layouts(), st.data())
def test_every_resume_point_is_a_cold_run_boundary(lay: PromptLayout, data: st.DataObject) -> None:
    p = data.draw(st.integers(0, lay.n_prompt))
    q = lay.resume_point(p)
    assert 0 <= q <= p
    assert lay.span_around(q) is None  # never inside a medium
    start, end = lay.segment(q)
    if q > start:  # inside a text segment: a long one, with a canonical chunk or nothing before a span
        assert end - start >= MIN_ROWS
        assert end - q >= MIN_ROWS or (q == end and end < lay.n_prompt)
    assert lay.resume_point(q) == q
