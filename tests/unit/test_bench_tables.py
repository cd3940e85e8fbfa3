"""README's and docs/performance.md's benchmark tables are what their result files say: a figure
edited by hand, or a result file rerun without ``python -m bench.report``, fails here."""

import pytest

from bench import report


@pytest.mark.parametrize("name", sorted(report.TABLES))
def test_a_committed_table_is_what_its_result_file_renders(name: str) -> None:
    assert report.committed(name) == report.rendered(name), (
        f"the {name} table differs from bench/results/{report.TABLES[name][1]}.json:"
        " run python -m bench.report (never edit the table by hand)"
    )


def test_a_table_names_the_date_and_commit_it_was_measured_at() -> None:
    for name in report.TABLES:
        measured = report.load(report.TABLES[name][1])["measured"]
        assert f"Measured {measured['date']} at commit {measured['commit']}" in report.committed(
            name
        )
