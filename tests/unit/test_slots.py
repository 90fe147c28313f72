import random

from kvllama.engine.slots import plan_moves


def apply(moves, decoders, prompts, scratch):
    owner = {s: ("d", s) for s in decoders} | {s: ("p", s) for s in prompts}
    for src, dst in moves:
        assert src in owner and dst not in owner, (src, dst, owner)
        owner[dst] = owner.pop(src)
    return owner


def check(decoders, prompts, scratch=8):
    moves = plan_moves(decoders, prompts, scratch)
    owner = apply(moves, decoders, prompts, scratch)
    d = len(decoders)
    assert sorted(k for k, v in owner.items() if v[0] == "d") == list(range(d))
    assert sorted(k for k, v in owner.items() if v[0] == "p") == list(range(d, d + len(prompts)))
    return moves


def test_compact_layout_needs_no_moves():
    assert check([0, 1, 2], [3, 4]) == []
    assert check([], []) == []


def test_hole_left_by_a_finished_decoder_is_filled_from_the_top():
    assert check([0, 2, 3], []) == [(3, 1)]


def test_prompt_that_became_a_decoder_swaps_through_a_free_or_scratch_slot():
    # Decoder 3 must reach id 1, which a prompt holds; all 8 ids are in use, so scratch.
    moves = check([0, 3], [1, 2, 4, 5, 6, 7])
    assert any(dst == 8 for _, dst in moves)


def test_random_layouts_always_compact():
    rng = random.Random(5)
    for _ in range(500):
        ids = rng.sample(range(8), rng.randint(0, 8))
        k = rng.randint(0, len(ids))
        check(ids[:k], ids[k:])


def test_idle_sessions_go_after_running_sequences():
    decoders, prompts, parked = [3], [0], [1, 2]
    moves = plan_moves(decoders, prompts, 8, parked)
    owner = {s: ("d", s) for s in decoders} | {s: ("p", s) for s in prompts} | {s: ("s", s) for s in parked}
    for src, dst in moves:
        assert src in owner and dst not in owner
        owner[dst] = owner.pop(src)
    assert owner[0][0] == "d" and owner[1][0] == "p" and {owner[2][0], owner[3][0]} == {"s"}
