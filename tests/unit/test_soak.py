"""The soak's plain logic: the fault schedule, the books, the pauses that faults cause."""

from __future__ import annotations

from collections import Counter

from mailroom.soak import FAULTS, Books, longest_pause_after, per_second, schedule, source_key


def test_every_fault_strikes_once_inside_the_run_and_apart():
    faults = schedule(FAULTS, 1200, seed=7)
    assert sorted(f.kind for f in faults) == sorted(FAULTS)
    assert all(120 <= f.at_s <= 1080 for f in faults)
    times = [f.at_s for f in faults]
    assert times == sorted(times) and min(b - a for a, b in zip(times, times[1:])) >= 0.4 * 960 / len(FAULTS) - 0.1
    assert schedule(FAULTS, 1200, seed=7) == faults and schedule(FAULTS, 1200, seed=8) != faults  # seeded


def test_the_books_count_lost_duplicated_and_unexpected():
    books = Books(sent={"a", "b", "c", "d"}, expected_dead={source_key("docs", 0, 5), source_key("scans", 1, 2)},
                  delivered=Counter({"a": 1, "b": 1, "c": 2}), dead=Counter({source_key("docs", 0, 5): 1, source_key("docs", 0, 9): 1}),
                  truth_sent={"a", "b"}, labelled=Counter({"a": 1, "b": 2}))
    figures = books.figures()
    assert (figures["delivered_once"], figures["dead_lettered_once"]) == (2, 1)
    assert figures["lost"] == 2  # d never arrived; the scans poison was never dead-lettered
    assert figures["duplicated"] == 1 and figures["unexpected_dead_letters"] == 1
    assert (figures["labelled_once"], figures["labelled_twice"], figures["labelled_missing"]) == (1, 1, 0)


def test_a_pause_is_the_longest_gap_that_began_just_after_the_fault():
    arrivals = [0, 1000, 2000, 2500, 14500, 15000, 40000, 41000]
    assert longest_pause_after(2200, arrivals, within_s=10) == 12.0  # 2500 -> 14500: the stall the fault caused
    assert longest_pause_after(30000, arrivals, within_s=5) == 10.0  # nothing began within 5 s: until the next arrival
    assert longest_pause_after(50000, arrivals) is None  # nothing after it
    assert per_second(arrivals, 0)[:3] == [1, 1, 2] and sum(per_second(arrivals, 0)) == len(arrivals)
