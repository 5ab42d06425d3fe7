from hypothesis import given
from hypothesis import strategies as st

from dvai_bridge.engine.stops import StopMatcher


def feed_all(stops, pieces):
    m = StopMatcher(stops)
    out = "".join(m.feed(p) for p in pieces)
    return out + m.flush(), m.stopped


def test_no_stops_passes_text_through():
    assert feed_all([], ["ab", "cd"]) == ("abcd", False)


def test_stop_inside_one_piece_cuts_there():
    assert feed_all(["END"], ["abcENDdef"]) == ("abc", True)


def test_stop_split_across_pieces_never_leaks_a_prefix():
    m = StopMatcher(["<|end|>"])
    emitted = [m.feed(p) for p in ["Hello <", "|en", "d|> tail"]]
    assert emitted == ["Hello ", "", ""]
    assert m.stopped


def test_held_text_is_released_when_it_is_not_a_stop():
    m = StopMatcher(["STOP"])
    assert m.feed("abST") == "ab"
    assert m.feed("Xy") == "STXy"
    assert m.flush() == ""
    assert not m.stopped


def test_held_text_is_released_at_the_end():
    assert feed_all(["STOP"], ["abSTO"]) == ("abSTO", False)


def test_earliest_of_several_stops_wins():
    assert feed_all(["c", "ab"], ["xxabc"]) == ("xx", True)


@given(
    st.text(alphabet="abc", max_size=40),
    st.lists(st.integers(1, 5), max_size=20),
    st.text(alphabet="abc", min_size=1, max_size=3),
)
def test_any_split_equals_cutting_the_whole_text(text, cuts, stop):
    pieces, i = [], 0
    for c in cuts:
        pieces.append(text[i : i + c])
        i += c
    pieces.append(text[i:])
    out, stopped = feed_all([stop], pieces)
    idx = text.find(stop)
    assert (out, stopped) == ((text[:idx], True) if idx >= 0 else (text, False))


def test_matched_names_the_stop_that_ended_the_text() -> None:
    m = StopMatcher(["END", "ST"])
    assert m.feed("a STOP b END") == "a " and m.matched == "ST"  # the earliest in the text
    m = StopMatcher(["xyz"])
    m.feed("no stop here")
    m.flush()
    assert m.matched is None
