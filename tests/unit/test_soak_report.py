"""bench/soak.py's accounting: what counts as a duplicate, a lost batch line, memory growth."""

from bench.soak import audit_runs, batch_audit, memory_verdict, merge_runs


def test_runs_are_summed_over_the_killed_endpoint_s_last_snapshot_and_the_rest() -> None:
    killed_before = {"task-a": 1, "task-b": 1}
    restarted, other = {"task-b": 1}, {"task-c": 1, "task-a": 1}
    assert merge_runs([killed_before, restarted, other]) == {"task-a": 2, "task-b": 2, "task-c": 1}


def test_a_second_run_is_a_duplicate_unless_the_endpoint_running_it_was_killed() -> None:
    runs = {"task-once": 1, "task-killed": 2, "task-twice": 2}
    audit = audit_runs(["once", "killed", "twice", "never"], runs, killed={"task-killed"})
    assert audit.ran_once == 1
    assert audit.duplicated == ["twice"]
    assert audit.rerun_after_endpoint_kill == ["killed"]
    assert audit.never_ran == ["never"]


def test_batch_lines_missing_or_repeated_in_the_output_are_counted() -> None:
    assert batch_audit(["a", "b", "c"], ["a", "b", "b", "x"]) == {
        "lines": 3,
        "lost": 1,
        "duplicated": 1,
        "unexpected": 1,
    }
    assert batch_audit(["a"], ["a"]) == {"lines": 1, "lost": 0, "duplicated": 0, "unexpected": 0}


def test_memory_growth_is_judged_against_the_stated_bound() -> None:
    assert memory_verdict("api", 100.0, 190.0, restarted=False) == "within bound"
    assert memory_verdict("api", 100.0, 260.0, restarted=False) == "GREW PAST BOUND"
    assert memory_verdict("poller-0", 100.0, 900.0, restarted=True) == "restarted (no bound)"
    assert memory_verdict("aws", 100.0, 900.0, restarted=False).startswith("emulator")
