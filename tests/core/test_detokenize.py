from dvai_bridge.core.detokenize import IncrementalDetokenizer


def byte_decode(tokens):
    return bytes(tokens).decode("utf-8", errors="replace")


def test_multibyte_characters_are_never_split():
    text = "héllo 🌍 wörld"
    detok = IncrementalDetokenizer(byte_decode)
    deltas = [detok.add(b) for b in text.encode()]
    deltas.append(detok.flush())
    assert "".join(deltas) == text
    assert all("\ufffd" not in d for d in deltas)


def test_incomplete_character_at_the_end_is_flushed():
    detok = IncrementalDetokenizer(byte_decode)
    raw = "a🌍".encode()[:-1]
    out = "".join(detok.add(b) for b in raw)
    assert out == "a"
    assert detok.flush() == "\ufffd"
