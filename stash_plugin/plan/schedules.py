"""Schedules as users write them: cron, Airflow presets, and Stash's ``@every``."""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime

from .model import Schedule

PRESETS = {
    "@hourly",
    "@daily",
    "@midnight",
    "@weekly",
    "@monthly",
    "@quarterly",
    "@yearly",
    "@annually",
}
_GO_UNIT_SECONDS = {
    "h": 3600.0,
    "m": 60.0,
    "s": 1.0,
    "ms": 1e-3,
    "us": 1e-6,
    "µs": 1e-6,
    "ns": 1e-9,
}
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_CRON_FIELD = re.compile(r"^[\d*/,\-?LW#A-Za-z]+$")
# Go's time.Duration is int64 nanoseconds: Stash could not take a longer @every, and a
# longer one would overflow the DAG's timetable (and hide every other DAG with it).
MAX_GO_DURATION_SECONDS = (2**63 - 1) / 1e9


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration such as ``1h30m`` or ``90s`` (what Stash's ``@every`` takes)."""
    text = text.strip()
    pos = 0
    total = 0.0
    for match in _GO_DURATION.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _GO_UNIT_SECONDS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"{text!r} is not a duration such as 30s, 1m or 1h30m")
    if not total <= MAX_GO_DURATION_SECONDS:  # also catches inf (a number of 400 digits)
        raise ValueError(f"{text!r} is longer than the longest duration, 2562047h (292 years)")
    return total


def parse_schedule(text: str) -> Schedule:
    """Normalise a schedule string; raises ValueError with a message a user can act on."""
    text = text.strip()
    if text.startswith("@every"):
        try:
            seconds = parse_go_duration(text.removeprefix("@every"))
        except ValueError as exc:  # name the whole schedule, not just what follows @every
            raise ValueError(f"{text!r}: @every needs a duration; {exc}") from None
        if seconds < 1 or seconds != int(seconds):
            raise ValueError(f"{text!r}: @every needs a whole number of seconds, at least 1s")
        return Schedule("every", int(seconds))
    if text.startswith("@"):
        if text not in PRESETS:
            raise ValueError(f"{text!r} is not a known preset ({', '.join(sorted(PRESETS))})")
        return Schedule("cron", text)
    fields = text.split()
    if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
        raise ValueError(f"{text!r} is not a cron expression of 5 fields, a preset or @every")
    _check_cron(text)
    return Schedule("cron", text)


def _check_cron(text: str) -> None:
    """Reject a cron expression that Airflow's timetable would reject at run time.

    Airflow computes the next run with croniter (default semantics: day of month OR
    day of week, next match searched within 50 years), so the same question asked
    here finds ``0 0 30 2 *`` (February 30th) before its DAG is scheduled and fails.
    """
    try:
        from croniter import CroniterBadDateError, croniter  # an Airflow dependency; pure
    except ImportError:  # pragma: no cover - croniter always ships with Airflow
        return
    if not croniter.is_valid(text):
        raise ValueError(f"{text!r} is not a valid cron expression")
    try:
        croniter(text, datetime.now(UTC).replace(tzinfo=None)).get_next(datetime)
    except CroniterBadDateError:
        raise ValueError(
            f"{text!r} never fires: no date matches its day of month, month and day of week"
        ) from None


def stable_offset(key: str, period: int) -> int:
    """A number in ``[0, period)`` that depends only on ``key``: the same in every
    process and every release (a digest, never Python's per-process salted ``hash``)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % period


# Presets by the day-of-month, month and day-of-week fields they keep; each is spread
# over its day (hour and minute), so @weekly stays on Sunday and @monthly on the 1st.
_PRESET_DAYS = {
    "@daily": "* * *",
    "@midnight": "* * *",
    "@weekly": "* * 0",
    "@monthly": "1 * *",
    "@quarterly": "1 1,4,7,10 *",
    "@yearly": "1 1 *",
    "@annually": "1 1 *",
}


def spread_schedule(schedule: Schedule, key: str) -> Schedule:
    """``schedule`` moved by a stable offset within its interval, so that thousands of
    targets written ``@hourly`` or ``@every 1h`` do not all start at minute 0.

    ``@hourly`` gets a minute, the daily and longer presets an hour and minute of their
    day, and an ``@every`` whose minutes divide an hour (or whose hours divide a day)
    the cron expression of the same period shifted by the offset. A cron expression
    the user wrote, an ``@every`` that no single cron expression repeats (``@every
    90m``, ``@every 45s``) and ``@every 1m`` stay as written. ``key`` is the DAG id.
    """
    if schedule.kind == "cron" and schedule.value == "@hourly":
        return Schedule("cron", f"{stable_offset(key, 60)} * * * *", "@hourly")
    if schedule.kind == "cron" and schedule.value in _PRESET_DAYS:
        minute = stable_offset(key, 24 * 60)
        days = _PRESET_DAYS[str(schedule.value)]
        return Schedule("cron", f"{minute % 60} {minute // 60} {days}", str(schedule.value))
    if schedule.kind != "every" or not isinstance(schedule.value, int) or schedule.value % 60:
        return schedule
    minutes = schedule.value // 60
    if 1 < minutes < 60 and 60 % minutes == 0:
        cron = f"{stable_offset(key, minutes)}-59/{minutes} * * * *"
        return Schedule("cron", cron, f"@every {minutes}m")
    if minutes % 60 == 0 and 24 % (minutes // 60) == 0:
        hours, offset = minutes // 60, stable_offset(key, minutes)
        hour_field = {1: "*", 24: str(offset // 60)}.get(hours, f"{offset // 60}-23/{hours}")
        return Schedule("cron", f"{offset % 60} {hour_field} * * *", f"@every {hours}h")
    return schedule


def _span(seconds: float) -> str:
    """``90`` -> ``1m30s``: a duration the way users write ``@every``."""
    whole = int(seconds)
    parts = [(whole // 86400, "d"), (whole % 86400 // 3600, "h"), (whole % 3600 // 60, "m")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n) + (
        f"{whole % 60}s" if whole % 60 else ""
    )
    return text or "0s"


def schedule_interval(schedule: Schedule) -> float | None:
    """The longest gap, in seconds, between two runs of ``schedule``; None when it does
    not repeat. Alerts fire when no backup succeeded for twice this long, so a cron that
    skips weekends is measured by its weekend gap, not its weekday one (the largest of
    the next 60 gaps)."""
    if schedule.kind == "every":
        return float(schedule.value or 0) or None
    if schedule.kind != "cron":
        return None
    from croniter import croniter  # an Airflow dependency; pure

    it = croniter(str(schedule.value), datetime(2024, 1, 1))
    fires = [it.get_next(float) for _ in range(61)]
    return max(b - a for a, b in zip(fires, fires[1:], strict=False))


def describe_schedule(schedule: Schedule, paused: bool = False) -> str:
    """The schedule in words, for DAG documentation."""
    if paused:
        return "paused: no scheduled runs (manual runs still work)"
    if schedule.kind == "once":
        return "once, as soon as Airflow sees it (an instant backup)"
    if schedule.kind == "none":
        return "never by itself: manual runs only"
    if schedule.kind == "every":
        return f"every {_span(float(schedule.value or 0))}"
    if schedule.spread_from:
        return (
            f"`{schedule.spread_from}`, spread over its interval: by the cron expression "
            f"`{schedule.value}` (UTC; `[stash] spread_schedules`)"
        )
    words = {
        "@hourly": "every hour, on the hour",
        "@daily": "every day at midnight (UTC)",
        "@midnight": "every day at midnight (UTC)",
        "@weekly": "every Sunday at midnight (UTC)",
        "@monthly": "on the first day of every month at midnight (UTC)",
        "@quarterly": "on the first day of every quarter at midnight (UTC)",
        "@yearly": "on January 1st at midnight (UTC)",
        "@annually": "on January 1st at midnight (UTC)",
    }
    value = str(schedule.value)
    if value in words:
        return words[value]
    gap = schedule_interval(schedule)
    longest = f"; at most {_span(gap)} between two runs" if gap else ""
    return f"by the cron expression `{value}` (UTC){longest}"
