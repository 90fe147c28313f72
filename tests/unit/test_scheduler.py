from kvllama.engine.scheduler import SeqProgress, plan


def prog(key: int, n_prompt: int, n_computed: int, decoding: bool = False) -> SeqProgress:
    return SeqProgress(key, n_prompt, n_computed, decoding)


def test_decoders_get_one_row_each_before_any_prefill():
    tick = plan([prog(0, 100, 0), prog(1, 5, 5, True), prog(2, 7, 7, True)], 64, 16)
    assert [(s.key, s.count, s.decoding) for s in tick.slices] == [
        (1, 1, True), (2, 1, True), (0, 16, False)
    ]


def test_prefill_is_chunked_only_while_someone_decodes():
    alone = plan([prog(0, 300, 0)], 128, 32)
    assert [(s.count, s.sample) for s in alone.slices] == [(128, False)]
    beside = plan([prog(0, 300, 0), prog(1, 4, 4, True)], 128, 32)
    assert [s.count for s in beside.slices if not s.decoding] == [32]


def test_budget_is_never_exceeded_and_prefills_go_in_admission_order():
    seqs = [prog(0, 50, 0), prog(1, 50, 0), prog(2, 50, 0), prog(3, 3, 3, True)]
    tick = plan(seqs, 40, 16)
    assert tick.n_rows == 40
    assert [(s.key, s.count) for s in tick.slices] == [(3, 1), (0, 16), (1, 16), (2, 7)]


def test_only_the_chunk_that_completes_the_prompt_samples():
    tick = plan([prog(0, 20, 10), prog(1, 40, 0)], 64, 64)
    by_key = {s.key: s for s in tick.slices}
    assert by_key[0].count == 10 and by_key[0].sample and by_key[0].start == 10
    assert by_key[1].count == 40 and by_key[1].sample
    partial = plan([prog(0, 100, 0)], 64, 64)
    assert not partial.slices[0].sample


def test_nothing_to_do_gives_an_empty_tick():
    assert plan([], 64, 16).slices == ()
    assert plan([prog(0, 10, 10)], 64, 16).slices == ()
