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
