from dvai_bridge.backends.fake import _TokenListOps
from dvai_bridge.core.prompt_cache import PromptCache


class NoTrim(_TokenListOps):
    def trim(self, snapshot, n):
        return False


def cache(max_bytes=10_000, **kw):
    return PromptCache(_TokenListOps(), max_bytes=max_bytes, min_reuse=2, **kw)


def test_miss_returns_all_tokens():
    c = cache()
    assert c.fetch_nearest([1, 2, 3]) == (None, [1, 2, 3])


def test_shorter_entry_that_prefixes_the_prompt_is_reused():
    c = cache()
    c.insert([1, 2, 3], [1, 2, 3])
    snap, rest = c.fetch_nearest([1, 2, 3, 4, 5])
    assert snap == [1, 2, 3] and rest == [4, 5]


def test_longer_entry_is_trimmed_to_the_common_prefix_on_a_copy():
    c = cache()
    c.insert([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6])
    snap, rest = c.fetch_nearest([1, 2, 3, 9])
    assert snap == [1, 2, 3] and rest == [9]
    again, _ = c.fetch_nearest([1, 2, 3, 4, 5, 6, 7])
    assert again == [1, 2, 3, 4, 5, 6]  # the stored entry was not cut


def test_an_exact_hit_still_leaves_one_token_to_prefill():
    c = cache()
    c.insert([1, 2, 3, 4], [1, 2, 3, 4])
    snap, rest = c.fetch_nearest([1, 2, 3, 4])
    assert snap == [1, 2, 3] and rest == [4]


def test_untrimmable_snapshots_fall_back_to_a_prefix_entry():
    c = PromptCache(NoTrim(), max_bytes=10_000, min_reuse=2)
    c.insert([1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6])
    c.insert([7, 8], [7, 8])
    assert c.fetch_nearest([1, 2, 3, 9]) == (None, [1, 2, 3, 9])
    assert c.fetch_nearest([7, 8, 9]) == ([7, 8], [9])


def test_inserting_an_extension_drops_its_prefixes():
    c = cache()
    c.insert([1, 2], [1, 2])
    c.insert([1, 2, 3], [1, 2, 3])
    assert len(c) == 1 and c.nbytes == 12


def test_byte_budget_evicts_least_recently_used():
    c = cache(max_bytes=40)  # 10 tokens of 4 bytes
    c.insert([1, 1, 1, 1], [1] * 4)
    c.insert([2, 2, 2, 2], [2] * 4)
    c.fetch_nearest([1, 1, 1, 1, 5])  # touch 1s
    c.insert([3, 3, 3, 3], [3] * 4)
    assert c.nbytes <= 40
    assert c.fetch_nearest([2, 2, 2, 2, 5])[0] is None
    assert c.fetch_nearest([1, 1, 1, 1, 5])[0] == [1] * 4


def test_too_short_to_be_worth_it_is_not_kept_or_reused():
    c = PromptCache(_TokenListOps(), max_bytes=1000, min_reuse=4)
    c.insert([1, 2], [1, 2])
    assert len(c) == 0
    c.insert([1, 2, 3, 4, 5], [1, 2, 3, 4, 5])
    assert c.fetch_nearest([1, 2, 9, 9])[0] is None
