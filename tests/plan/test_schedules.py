"""Schedules as users write them: Stash's ``@every``, cron strings and Airflow presets."""

from __future__ import annotations

import pytest

from stash_plugin.plan.model import Schedule
from stash_plugin.plan.schedules import parse_go_duration, parse_schedule


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("@every 1m", 60),
        ("@every 1h30m", 5400),
        ("@every 90s", 90),
        ("@every 2h", 7200),
        ("@every 1h0m30s", 3630),
        ("  @every 5m  ", 300),
    ],
)
def test_every_is_seconds_between_runs(text: str, seconds: int) -> None:
    assert parse_schedule(text) == Schedule("every", seconds)


@pytest.mark.parametrize(
    "text", ["*/5 * * * *", "0 3 * * *", "30 2 1 * *", "0 0 * * MON-FRI", "15 4 * * 0"]
)
def test_cron_strings_pass_through(text: str) -> None:
    assert parse_schedule(text) == Schedule("cron", text)


@pytest.mark.parametrize(
    "preset", ["@hourly", "@daily", "@midnight", "@weekly", "@monthly", "@yearly"]
)
def test_airflow_presets_pass_through(preset: str) -> None:
    assert parse_schedule(preset) == Schedule("cron", preset)


def test_go_durations() -> None:
    assert parse_go_duration("1h30m") == 5400
    assert parse_go_duration("1.5h") == 5400
    assert parse_go_duration("500ms") == 0.5


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("@every", "1m"),  # no duration at all
        ("@every 1x", "1m"),  # unknown unit
        ("@every 1h 30m", "1m"),  # Go durations have no spaces
        ("@every 500ms", "at least 1s"),
        ("@every 0s", "at least 1s"),
        ("@every 99999999999999999999h", "292 years"),  # overflowed the DAG's timetable
        ("@every " + "9" * 400 + "h", "292 years"),  # float inf: crashed the planner
        ("61 * * * *", "cron"),
        ("@sometimes", "@daily"),  # the known presets are listed
        ("* * *", "5 fields"),
        ("every minute", "cron"),
        ("", "cron"),
    ],
)
def test_bad_schedules_raise_a_helpful_value_error(text: str, hint: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_schedule(text)
    message = str(info.value)
    assert hint in message
    # The message quotes what the user wrote, so it can be found in the manifest.
    assert repr(text.strip()) in message or text.strip() in message


# --------------------------------------------------------------------------- spreading


def _fires(cron: str, hours: int) -> list[float]:
    from datetime import datetime

    from croniter import croniter

    it = croniter(cron, datetime(2024, 1, 1))
    fires, end = [], datetime(2024, 1, 1).timestamp() + hours * 3600
    while (t := it.get_next(float)) < end:
        fires.append(t)
    return fires


def test_offsets_are_stable_across_processes() -> None:
    """A digest, not Python's salted hash(): another interpreter (another hash seed)
    gives every DAG the same minute, so a restarted scheduler keeps each schedule."""
    import subprocess
    import sys

    from stash_plugin.plan.schedules import stable_offset

    ids = [f"stash-backup.ns{i}.r.deployment.app" for i in range(50)]
    code = (
        "import sys; from stash_plugin.plan.schedules import stable_offset; "
        "print([stable_offset(i, 1440) for i in sys.argv[1:]])"
    )
    other = subprocess.run(
        [sys.executable, "-c", code, *ids],
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == str([stable_offset(i, 1440) for i in ids])
    assert len({stable_offset(i, 1440) for i in ids}) > 40  # not one minute for all


def test_ten_thousand_hourly_targets_spread_over_the_hour() -> None:
    from collections import Counter

    from stash_plugin.plan.schedules import spread_schedule

    minutes: Counter[int] = Counter()
    for i in range(10_000):
        spread = spread_schedule(parse_schedule("@hourly"), f"stash-backup.t{i}.r.deployment.a")
        assert spread.spread_from == "@hourly"
        minute, rest = str(spread.value).split(" ", 1)
        assert rest == "* * * *"
        minutes[int(minute)] += 1
    assert sorted(minutes) == list(range(60))
    # 166.7 a minute on average; a fair spread stays well inside +-35%.
    assert 110 < min(minutes.values()) and max(minutes.values()) < 225, minutes.most_common(3)


@pytest.mark.parametrize(
    ("text", "hours", "runs"),
    [
        ("@every 1h", 24, 24),
        ("@every 15m", 2, 8),
        ("@every 6h", 48, 8),
        ("@every 24h", 72, 3),
        ("@daily", 72, 3),
        ("@weekly", 24 * 21, 3),
    ],
)
def test_a_spread_schedule_keeps_its_period(text: str, hours: int, runs: int) -> None:
    from stash_plugin.plan.schedules import schedule_interval, spread_schedule

    schedule = parse_schedule(text)
    period = schedule_interval(schedule)
    spread = spread_schedule(schedule, "stash-backup.demo.app-backup.deployment.app")
    assert spread.kind == "cron" and spread.value != text
    fires = _fires(str(spread.value), hours)
    assert len(fires) == runs
    assert {b - a for a, b in zip(fires, fires[1:], strict=False)} == {period}


def test_weekly_and_monthly_keep_their_day() -> None:
    from stash_plugin.plan.schedules import spread_schedule

    weekly = str(spread_schedule(parse_schedule("@weekly"), "x").value).split()
    monthly = str(spread_schedule(parse_schedule("@monthly"), "x").value).split()
    assert weekly[2:] == ["*", "*", "0"] and monthly[2:] == ["1", "*", "*"]


@pytest.mark.parametrize(
    "text", ["0 3 * * *", "*/5 * * * *", "@every 90m", "@every 45s", "@every 1m"]
)
def test_what_no_single_offset_cron_repeats_or_a_user_wrote_stays(text: str) -> None:
    from stash_plugin.plan.schedules import spread_schedule

    schedule = parse_schedule(text)
    assert spread_schedule(schedule, "stash-backup.a.b.deployment.c") == schedule
