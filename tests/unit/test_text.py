from kvllama.decoding.text import StopMatcher, Utf8Assembler


def test_multibyte_character_split_over_pieces_is_never_emitted_broken():
    asm = Utf8Assembler()
    raw = "né😀".encode()
    out = [asm.push(raw[i : i + 1]) for i in range(len(raw))]
    assert "".join(out) == "né😀"
    assert all("\ufffd" not in chunk for chunk in out)
    assert out[-1] == "😀" and out[-2] == ""


def test_incomplete_bytes_at_the_end_become_a_replacement_character():
    asm = Utf8Assembler()
    assert asm.push("é".encode()[:1]) == ""
    assert asm.flush() == "\ufffd"


def test_stop_sequence_spanning_pieces_never_leaks():
    m = StopMatcher(("</end>",))
    emitted = []
    for piece in ["Hello <", "/e", "nd> tail"]:
        r = m.push(piece)
        emitted.append(r.text)
        if r.matched:
            break
    assert "".join(emitted) == "Hello "
    assert r.matched == "</end>"


def test_held_text_is_released_when_it_does_not_become_a_stop():
    m = StopMatcher(("STOP",))
    assert m.push("abc ST").text == "abc "
    assert m.push("ay").text == "STay"
    assert m.push("x S").text == "x "
    assert m.flush() == "S"


def test_earliest_of_several_stops_wins():
    m = StopMatcher(("world", "lo"))
    r = m.push("hello world")
    assert r.text == "hel" and r.matched == "lo"


def test_no_stops_passes_text_through():
    m = StopMatcher(())
    assert m.push("abc").text == "abc"
    assert m.flush() == ""
