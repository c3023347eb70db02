"""What one monitor run leaves for the next: pure logic, no Prefect."""

from __future__ import annotations

from tasks.monitoring import WindowVerdict, next_monitor_state


def test_next_window_starts_after_a_judged_one_and_rows_too_few_to_judge_wait_for_more():
    previous = {"version": "3", "window_end": "2026-11-26T10:00:00+00:00", "metrics": {"requests": 10}}
    judged = WindowVerdict("fraud", "3", "2026-11-26T10:00:01+00:00", "2026-11-26T10:01:00+00:00", 2400, "ok")
    state = next_monitor_state(previous, judged, {"requests": 2410})
    assert state["window_end"] == "2026-11-26T10:01:00+00:00" and state["metrics"] == {"requests": 2410}
    assert state["version"] == "3" and "judged_at" in state

    too_few = WindowVerdict("fraud", "3", "2026-11-26T10:01:01+00:00", "2026-11-26T10:01:05+00:00", 12,
                            "insufficient data")
    kept = next_monitor_state(state, too_few, None)
    assert kept["window_end"] == "2026-11-26T10:01:00+00:00"  # those 12 rows are judged with the next ones
    assert kept["metrics"] == {"requests": 2410}  # no scrape this time: rates stay relative to the last one
