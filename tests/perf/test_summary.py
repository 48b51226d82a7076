"""The one table of a benchmark run, built from the benchmarks' JSON (not a benchmark itself)."""

from __future__ import annotations

from typing import Any

from tests.perf.levers import LEVERS
from tests.perf.summary import EXPECTED, render

MACHINE = {"platform": "Linux-test", "cpus": 2, "python": "3.11", "sqlite": "3.40"}


def document(name: str, *rows: tuple[str, object, str, bool], **extra: Any) -> dict[str, Any]:
    results = [{"figure": f, "value": v, "target": t, "met": m} for f, v, t, m in rows]
    return {"benchmark": name, "results": results, **extra}


def every_benchmark_met() -> list[dict[str, Any]]:
    return [
        document(f"p{ident[1]}_x", (f"{ident} figure", 1, "<= 2", True), delivery="on")
        for ident in EXPECTED
    ]


def table_rows(text: str) -> list[list[str]]:
    lines = [line for line in text.splitlines() if line.startswith("| P")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]


def test_a_run_of_p1_to_p8_all_met_is_one_table_with_nothing_wrong():
    text, problems = render(every_benchmark_met(), MACHINE, {})
    assert problems == []
    assert [row[0] for row in table_rows(text)] == list(EXPECTED)
    assert "Linux-test, 2 CPUs" in text


def test_each_judged_row_shows_its_runs_yardstick_and_a_miss_its_lever():
    p1 = document(
        "p1_intake_delivery_on",
        ("yardstick: fsync'd inserts/s", 5121, "-", True),
        ("sequential p50 (ms)", 2.1, "<= 3", True),
        ("agent CPU ms per receipt, while posting", 1.1, "<= 0.4 (stretch)", False),
        ("drain after the last receipt (s)", 97.0, "-", True),
        delivery="on: both",
    )
    levers = {"p1_intake_delivery_on": {"agent CPU ms": "a lighter HTTP front"}}
    text, _ = render([p1], MACHINE, levers)
    rows = table_rows(text)
    assert rows == [
        [
            "P1",
            "on: both",
            "sequential p50 (ms)",
            "2.1",
            "<= 3",
            "yes",
            "fsync'd inserts/s 5121",
            "",
        ],
        [
            "P1",
            "on: both",
            "agent CPU ms per receipt, while posting",
            "1.1",
            "<= 0.4 (stretch)",
            "**no**",
            "fsync'd inserts/s 5121",
            "a lighter HTTP front",
        ],
    ]


def test_a_miss_that_names_no_lever_is_a_problem_of_the_run():
    runs = every_benchmark_met()
    runs[7] = document("p8_worst_case", ("intake p99 (ms)", 49.1, "<= 10", False))
    text, problems = render(runs, MACHINE, {"p8_worst_case": {"agent CPU": "elsewhere"}})
    assert problems == ["P8 'intake p99 (ms)' missed its target and names no lever"]
    assert "**none named**" in text


def test_a_row_may_name_its_own_lever():
    runs = every_benchmark_met()
    runs[3] = document(
        "p4_cache",
        (
            "lookup p99 (ms)",
            3,
            "<= 2",
            False,
        ),
    )
    runs[3]["results"][0]["lever"] = "its own"
    text, problems = render(runs, MACHINE, {})
    assert problems == []
    assert table_rows(text)[3][-1] == "its own"


def test_benchmarks_left_out_of_the_run_are_named():
    runs = [d for d in every_benchmark_met() if d["benchmark"] not in ("p6_x", "p8_x")]
    text, problems = render(runs, MACHINE, {})
    assert problems == ["not in this run: P6, P8"]
    assert "- not in this run: P6, P8" in text


def test_what_ran_beside_and_the_size_are_shown_per_benchmark():
    run = document(
        "p4_cache",
        ("local apply rate (contacts/s, excl. fetch)", 30000, ">= 20000", True),
        beside={
            "seconds": 80,
            "load_average": [0.5, 2.1],
            "others_cores": 0.8,
            "others": [{"name": "pytest", "cpu_seconds": 40.2}],
        },
        sized_down=["contacts 50,000 of 1,000,000"],
    )
    text, _ = render([run], MACHINE, {})
    assert (
        "| p4_cache | 80 | 0.5 → 2.1 | 0.8 | pytest 40.2 s | contacts 50,000 of 1,000,000 |" in text
    )


def test_every_benchmark_that_can_miss_has_levers():
    names = {
        "p1_intake",
        "p1_intake_delivery_on",
        "p2_vs_direct",
        "p2_vs_direct_delivery_off",
        "p3_drain",
        "p4_cache",
        "p5_footprint",
        "p6_purge",
        "p7_first_download",
        "p8_worst_case",
    }
    assert names <= set(LEVERS)
