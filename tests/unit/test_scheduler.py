from kvllama.engine.scheduler import SeqProgress, plan


def prog(key: int, n_prompt: int, n_computed: int, decoding: bool = False, seq: int | None = None):
    return SeqProgress(key, key if seq is None else seq, n_prompt, n_computed, decoding)


def test_prompt_chunk_first_then_one_decode_row_per_generator_by_sequence_id():
    tick = plan([prog(0, 100, 0, seq=2), prog(1, 5, 5, True, seq=1), prog(2, 7, 7, True, seq=0)], 64, 16)
    assert [(s.key, s.count, s.decoding) for s in tick.slices] == [
        (0, 16, False), (2, 1, True), (1, 1, True)
    ]


def test_prefill_is_chunked_only_while_someone_decodes():
    alone = plan([prog(0, 300, 0)], 128, 32)
    assert [(s.count, s.sample) for s in alone.slices] == [(128, False)]
    beside = plan([prog(0, 300, 0), prog(1, 4, 4, True)], 128, 32)
    assert [s.count for s in beside.slices if not s.decoding] == [32]


def test_one_prompt_per_tick_oldest_first_within_budget():
    seqs = [prog(0, 50, 0), prog(1, 50, 0), prog(2, 3, 3, True)]
    tick = plan(seqs, 40, 16)
    assert [(s.key, s.count) for s in tick.slices] == [(0, 16), (2, 1)]
    done_first = [prog(0, 50, 50, True), prog(1, 50, 0), prog(2, 50, 0)]
    assert [s.key for s in plan(done_first, 64, 64).slices if not s.decoding] == [1]
    assert plan(seqs, 40, 16).n_rows <= 40


def test_chunk_ends_are_aligned_so_boundaries_do_not_depend_on_other_requests():
    # 100-token prompt restored to 10 tokens, 3 decoders, chunk 40, align 16: ends at 48 (not 50).
    seqs = [prog(0, 100, 10), prog(1, 5, 5, True), prog(2, 5, 5, True), prog(3, 5, 5, True)]
    chunk = plan(seqs, 64, 40, align=16).slices[0]
    assert (chunk.start, chunk.count) == (10, 38)
    # The last chunk of a prompt ends at the prompt's end, aligned or not.
    tail = plan([prog(0, 100, 96)], 64, 40, align=16).slices[0]
    assert (tail.start, tail.count, tail.sample) == (96, 4, True)
    # A budget smaller than one aligned step still makes progress.
    tiny = plan([prog(0, 100, 0)], 8, 8, align=16).slices[0]
    assert tiny.count == 8


def test_only_the_chunk_that_completes_the_prompt_samples():
    tick = plan([prog(0, 20, 10)], 64, 64)
    assert tick.slices[0].count == 10 and tick.slices[0].sample and tick.slices[0].start == 10
    partial = plan([prog(0, 100, 0)], 64, 64)
    assert not partial.slices[0].sample


def test_nothing_to_do_gives_an_empty_tick():
    assert plan([], 64, 16).slices == ()
    assert plan([prog(0, 10, 10)], 64, 16).slices == ()


def test_decode_groups_split_many_decoders_into_balanced_passes():
    from kvllama.engine.scheduler import decode_groups

    seqs = [prog(0, 100, 0, seq=8)] + [prog(i, 5, 5, True) for i in range(1, 9)]
    tick = plan(seqs, 64, 16)
    groups = decode_groups(tick.slices, 7)
    assert [len(g) for g in groups] == [5, 4]  # prompt + 4 decoders, then 4 decoders
    assert not groups[0][0].decoding and all(s.decoding for s in groups[1])
    assert decode_groups(tick.slices, 0) == [tick.slices]
    assert decode_groups((), 7) == []
