"""The authenticators' memory: entries expire on time, negatives sooner, and it stays bounded."""

from chalicelib.auth.memo import Memo


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def memo(clock: Clock, **kw: int) -> Memo[str | None]:
    return Memo(
        maxsize=kw.get("maxsize", 100),
        negative_maxsize=kw.get("negative_maxsize", 100),
        ttl_s=60,
        negative_ttl_s=5,
        clock=clock,
    )


def test_a_positive_entry_lives_ttl_and_a_negative_one_negative_ttl() -> None:
    clock = Clock()
    m = memo(clock)
    m.put("good", "alice")
    m.put("bad", None, negative=True)
    clock.now += 4.9
    assert (m.get("good"), m.get("bad")) != (None, None)
    hit = m.get("bad")
    assert hit is not None and hit.negative and hit.value is None
    clock.now += 0.2
    assert m.get("bad") is None
    good = m.get("good")
    assert good is not None and good.value == "alice"
    clock.now += 55
    assert m.get("good") is None


def test_until_shortens_an_entry_but_never_lengthens_it() -> None:
    clock = Clock()
    m = memo(clock)
    m.put("soon", "x", until=clock.now + 10)
    m.put("late", "y", until=clock.now + 1000)
    m.put("gone", "z", until=clock.now - 1)
    clock.now += 10
    assert m.get("soon") is None
    assert m.get("late") is not None
    assert m.get("gone") is None
    clock.now += 50
    assert m.get("late") is None


def test_zero_ttl_remembers_nothing() -> None:
    m: Memo[str] = Memo(maxsize=10, ttl_s=0, negative_ttl_s=5, clock=Clock())
    m.put("k", "v")
    m.put("n", "v", negative=True)
    assert len(m) == 0


def test_size_is_bounded_and_negatives_do_not_evict_positives() -> None:
    clock = Clock()
    m = memo(clock, maxsize=10, negative_maxsize=3)
    for i in range(25):
        m.put(f"good{i}", f"user{i}")
    for i in range(1000):
        m.put(f"bad{i}", None, negative=True)
    assert m.counts() == (10, 3)
    assert len(m) == 13
    # Least recently used go first: the last ten positives are all still there.
    assert all(m.get(f"good{i}") is not None for i in range(15, 25))
    assert m.get("good14") is None


def test_a_key_whose_answer_changes_keeps_only_the_newest() -> None:
    clock = Clock()
    m = memo(clock)
    m.put("k", None, negative=True)
    m.put("k", "now-there")
    hit = m.get("k")
    assert hit is not None and hit.value == "now-there" and not hit.negative
    m.put("k", None, negative=True)
    hit = m.get("k")
    assert hit is not None and hit.negative
    assert m.counts() == (0, 1)
