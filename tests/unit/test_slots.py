import random

from kvllama.decoding.slots import plan_moves


def apply(moves, decoders, prompts, n_ids):
    owner = {s: ("d", s) for s in decoders} | {s: ("p", s) for s in prompts}
    for src, dst in moves:
        assert src in owner and dst not in owner and 0 <= dst < n_ids, (src, dst, owner)
        owner[dst] = owner.pop(src)
    return owner


def check(decoders, prompts, n_ids=8):
    moves = plan_moves(decoders, prompts, n_ids)
    assert moves is not None
    owner = apply(moves, decoders, prompts, n_ids)
    d = len(decoders)
    assert sorted(k for k, v in owner.items() if v[0] == "d") == list(range(d))
    assert sorted(k for k, v in owner.items() if v[0] == "p") == list(range(d, d + len(prompts)))
    return moves


def test_compact_layout_needs_no_moves():
    assert check([0, 1, 2], [3, 4]) == []
    assert check([], []) == []


def test_hole_left_by_a_finished_decoder_is_filled_from_the_top():
    assert check([0, 2, 3], []) == [(3, 1)]


def test_prompt_that_became_a_decoder_swaps_through_a_free_slot():
    # Decoder 3 must reach id 1, which a prompt holds, and the prompt must go where 3 was:
    # a cycle, broken through the one free id (7).
    moves = check([0, 3], [1, 2, 4, 5, 6])
    assert any(dst == 7 for _, dst in moves)


def test_a_cycle_with_every_id_held_has_no_plan():
    # The same cycle with all 8 ids in use: nothing to move through, the caller frees an id.
    assert plan_moves([0, 3], [1, 2, 4, 5, 6, 7], 8) is None
    # Without a cycle a full table still compacts: nothing needs to move.
    assert plan_moves([0, 1], [2, 3, 4, 5, 6, 7], 8) == []


def test_random_layouts_compact_whenever_an_id_is_free():
    rng = random.Random(5)
    for _ in range(500):
        ids = rng.sample(range(8), rng.randint(0, 7))
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
