from kvllama.decoding.scheduler import SeqProgress, plan


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


def test_prompts_on_consecutive_ids_share_a_tick_with_equal_chunks_oldest_first():
    seqs = [prog(0, 50, 0), prog(1, 50, 0), prog(2, 3, 3, True)]
    tick = plan(seqs, 40, 16)
    assert [(s.key, s.count) for s in tick.slices] == [(0, 8), (1, 8), (2, 1)]
    done_first = [prog(0, 50, 50, True), prog(1, 50, 0), prog(2, 50, 0, seq=5)]
    assert [s.key for s in plan(done_first, 64, 64).slices if not s.decoding] == [1]  # id 5 not adjacent
    assert plan(seqs, 40, 16).n_rows <= 40


def test_four_prompts_admitted_together_prefill_together_in_one_ubatch():
    seqs = [prog(i, 200, 0) for i in range(4)]
    first = plan(seqs, 512, 128, align=64, n_ubatch=512)
    assert [(s.key, s.start, s.count) for s in first.slices] == [(i, 0, 128) for i in range(4)]
    then = plan([prog(i, 200, 128) for i in range(4)], 512, 128, align=64, n_ubatch=512)
    assert [(s.count, s.sample) for s in then.slices] == [(72, True)] * 4
    # Rows beyond n_ubatch would be split unevenly by llama.cpp: never planned.
    assert plan(seqs, 2048, 128, align=64, n_ubatch=256).n_rows <= 256


def test_a_neighbour_whose_chunk_would_break_the_rules_waits():
    # The neighbour has 12 tokens left: an 8-row chunk would leave 4, so it sits this tick out.
    seqs = [prog(0, 300, 0), prog(1, 20, 8)]
    tick = plan(seqs, 16, 16, align=8)
    assert [(s.key, s.count) for s in tick.slices] == [(0, 16)]


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


def test_decode_groups_split_many_decoders_into_even_passes():
    from kvllama.decoding.scheduler import decode_groups

    seqs = [prog(0, 100, 0, seq=8)] + [prog(i, 5, 5, True) for i in range(1, 9)]
    tick = plan(seqs, 64, 16)
    groups = decode_groups(tick.slices, 7)
    assert [len(g) for g in groups] == [5, 4]  # prompt + 4 decoders, then 4 decoders
    assert not groups[0][0].decoding and all(s.decoding for s in groups[1])
    # Each pass is a run of consecutive sequence ids, in order.
    ids = [[seqs[s.key].seq_id for s in g if s.decoding] for g in groups]
    assert ids == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert decode_groups(tick.slices, 0) == [tick.slices]
    assert decode_groups((), 7) == []


def test_prompts_go_alone_when_a_decoder_follows_their_last_id():
    from kvllama.decoding.scheduler import decode_groups

    # A prompt on id 2 and decoders on 0, 1 and 3 (compaction could not swap them: every id
    # held). llama.cpp would take decoder 3 into the prompt's ubatch, so the prompt goes alone.
    seqs = [prog(0, 100, 0, seq=2), prog(1, 5, 5, True, seq=0), prog(2, 5, 5, True, seq=1),
            prog(3, 5, 5, True, seq=3)]
    tick = plan(seqs, 64, 16)
    seq_ids = {s.key: s.seq_id for s in seqs}
    groups = decode_groups(tick.slices, 7, seq_ids)
    assert [[s.decoding for s in g] for g in groups] == [[False], [True, True, True]]
    # The compact layout (decoders below the prompts) keeps one pass.
    seqs[0], seqs[3] = prog(0, 100, 0, seq=3), prog(3, 5, 5, True, seq=2)
    tick = plan(seqs, 64, 16)
    assert len(decode_groups(tick.slices, 7, {s.key: s.seq_id for s in seqs})) == 1


def test_decode_groups_never_exceed_the_cap_and_keep_every_row():
    from kvllama.decoding.scheduler import Slice, decode_groups

    for n in range(1, 30):
        for cap in range(1, 9):
            slices = tuple(Slice(i, 5, 1, True, True) for i in range(n))
            groups = decode_groups(slices, cap)
            sizes = [len(g) for g in groups]
            assert max(sizes) <= cap and [s for g in groups for s in g] == list(slices)
            assert max(sizes) - min(sizes) <= 1 and len(groups) == -(-n // cap)


def test_no_chunk_of_fewer_than_eight_rows_unless_the_prompt_is_shorter():
    from kvllama.decoding.scheduler import MIN_CHUNK_ROWS

    # 70 tokens in chunks of 64: 62 + 8, not 64 + 6.
    first = plan([prog(0, 70, 0), prog(1, 5, 5, True)], 512, 64, align=64).slices[0]
    assert (first.start, first.count) == (0, 62)
    assert plan([prog(0, 70, 62), prog(1, 5, 5, True)], 512, 64, align=64).slices[0].count == 8
    # A save point 3 rows ahead is skipped rather than cut into a 3-row chunk.
    near = SeqProgress(0, 0, 300, 125, False, stop_at=128)
    assert plan([near], 512, 64, align=64).slices[0].count >= MIN_CHUNK_ROWS
    # A budget too small for a canonical chunk waits while others decode...
    crowded = plan([prog(0, 100, 0)] + [prog(i, 5, 5, True) for i in range(1, 6)], 10, 64)
    assert all(s.decoding for s in crowded.slices)
    # ...and never stalls when nobody decodes; a 5-token prompt is one chunk.
    assert plan([prog(0, 100, 0)], 4, 64).slices[0].count == 4
    assert plan([prog(0, 5, 0)], 512, 64).slices[0].count == 5


def test_every_chunk_of_every_split_is_canonical():
    from kvllama.decoding.scheduler import MIN_CHUNK_ROWS

    for n in range(8, 400, 7):
        for start in (0, 64, 125):
            if start >= n - 8:
                continue
            done, counts = start, []
            while done < n:
                s = plan([prog(0, n, done), prog(1, 5, 5, True)], 512, 64, align=64).slices[0]
                counts.append(s.count)
                done += s.count
            assert done == n and min(counts) >= MIN_CHUNK_ROWS, (n, start, counts)


def test_with_per_pass_kernels_prompts_and_eight_decoders_go_as_two_passes():
    from kvllama.decoding.scheduler import decode_groups

    seqs = [prog(i, 5, 5, True) for i in range(12)] + [prog(12, 100, 0)]
    tick = plan(seqs, 128, 16)
    # One pass of all 12 decoders (vector kernels at any size), the prompt beside it.
    groups = decode_groups(tick.slices, 0, per_pass_kernels=True)
    assert [[s.decoding for s in g] for g in groups] == [[False], [True] * 12]
    # Seven decoders stay in the vector class even in a stock pass: one pass.
    few = plan(seqs[5:], 128, 16)
    assert len(decode_groups(few.slices, 0, per_pass_kernels=True)) == 1
    # Without the switch the cap (if any) decides, as before.
    assert len(decode_groups(tick.slices, 0)) == 1
