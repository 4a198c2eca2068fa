"""The history page's chart: how many events match per hour, day, week,
month or year, in DISPLAY_TIMEZONE."""

import dataclasses
import datetime
import itertools

from ..ingest.schemas import MAX_EVENT_TIME, MIN_EVENT_TIME
from . import counting, queries, times

HOUR = 3_600_000
DAY = 24 * HOUR
# The chart's unit for the span of its range: hours under two days, days
# up to three months, then weeks, months and, past ten years, years.
CHART_UNITS = [
    (2 * DAY, "hour"),
    (92 * DAY, "day"),
    (730 * DAY, "week"),
    (3653 * DAY, "month"),
    (None, "year"),
]
# Every how many units the axis is labelled, the fewest that keep it to
# MAX_TICKS labels.
CHART_STEPS = {
    "hour": (1, 2, 3, 6, 12),
    "day": (1, 2, 7, 14),
    "week": (1, 2, 4, 8, 13, 26),
    "month": (1, 2, 3, 6, 12),
    "year": (1, 2, 5, 10, 20),
}
MAX_TICKS = 8


def chart(conn, filters):
    """Events per hour, day, week, month or year (in DISPLAY_TIMEZONE),
    whichever fits the range: from ``since`` or the oldest match to
    ``until`` or the newest, never past the log's own first and last
    events. An hourly chart shows a day at least.

    Only EventTimes the schema accepts are charted: their days exist in
    every zone. None when no match lies in that range.
    """
    zone = times.zone()
    since = MIN_EVENT_TIME if filters.since is None else max(filters.since, MIN_EVENT_TIME)
    until = MAX_EVENT_TIME if filters.until is None else min(filters.until, MAX_EVENT_TIME)
    if since > until:
        return None
    charted = dataclasses.replace(filters, since=since, until=until)
    last = counting.newest(conn, charted)
    if last is None:
        return None
    first = counting.oldest(conn, charted)
    everything = queries.Filters(since=MIN_EVENT_TIME, until=MAX_EVENT_TIME)
    if filters.since is not None:  # a since before the log began would chart empty days
        first = max(since, counting.oldest(conn, everything))
    if filters.until is not None:  # and an until in the future, empty days to come
        last = min(until, counting.newest(conn, everything))
    unit = next(unit for span, unit in CHART_UNITS if span is None or last - first < span)
    if unit == "hour":
        first = max(since, min(first, last - 23 * HOUR))
    starts = _unit_starts(unit, first, last, zone)
    # Clipped to since/until here, so each bar is one index range.
    spans = [
        (max(times.ms(start), since), min(times.ms(stop), until + 1))
        for start, stop in itertools.pairwise(starts)
    ]
    unbounded = dataclasses.replace(filters, since=None, until=None)
    counts = counting.per_day(conn, unbounded, spans)
    step = next(
        (n for n in CHART_STEPS[unit] if len(spans) <= MAX_TICKS * n), CHART_STEPS[unit][-1]
    )
    width = 100 / len(spans)
    return {
        "unit": unit,
        "first": _label(unit, starts[0], "title"),
        "last": _label(unit, starts[-2], "title"),
        "peak": max(counts),
        "bars": [
            {"x": round(n * width, 4), "title": _label(unit, start, "title"), "count": count}
            for n, (start, count) in enumerate(zip(starts[:-1], counts, strict=True))
        ],
        "width": round(width, 4),
        "ticks": [
            {"x": round((n + 0.5) * width, 4), "label": _label(unit, start, "tick")}
            for n, start in enumerate(starts[:-1])
            if _ordinal(unit, start) % step == 0
        ],
    }


def _unit_starts(unit, first, last, zone):
    """The start of each ``unit`` from the one holding ms ``first`` to the
    one holding ``last``, and the start of the one after (local times)."""
    local = times.instant(first).astimezone(zone)
    if unit == "hour":
        # Stepped in UTC: a local hour may repeat or be missing.
        at = local.replace(minute=0, second=0, microsecond=0).astimezone(datetime.timezone.utc)
        starts = [at]
        while times.ms(starts[-1]) <= last:
            starts.append(starts[-1] + datetime.timedelta(hours=1))
        return [start.astimezone(zone) for start in starts]
    day = local.date()
    day = {
        "day": day,
        "week": day - datetime.timedelta(days=day.weekday()),
        "month": day.replace(day=1),
        "year": day.replace(month=1, day=1),
    }[unit]
    starts = [datetime.datetime.combine(day, datetime.time(), zone)]
    while times.ms(starts[-1]) <= last:
        day = starts[-1].date()
        if unit in ("day", "week"):
            day += datetime.timedelta(days=1 if unit == "day" else 7)
        elif unit == "month":
            day = day.replace(year=day.year + day.month // 12, month=day.month % 12 + 1)
        else:
            day = day.replace(year=day.year + 1)
        starts.append(datetime.datetime.combine(day, datetime.time(), zone))
    return starts


def _ordinal(unit, start):
    """A running number of ``unit``s, so that ticks fall on round values:
    whole hours of the day, Mondays, the first months of quarters."""
    return {
        "hour": start.hour,
        "day": start.toordinal() - 1,
        "week": start.toordinal() // 7,
        "month": start.month - 1,
        "year": start.year,
    }[unit]


def _label(unit, start, form):
    """A bar's title, or its tick on the axis: short, a new day's date
    where hours begin one."""
    if unit == "hour":
        if form == "title":
            return f"{start:%Y-%m-%d %H:00}"
        return f"{start:%b} {start.day}" if start.hour == 0 else f"{start:%H:00}"
    if unit == "month":
        return f"{start:%Y-%m}" if form == "title" else f"{start:%b %Y}"
    if unit == "year":
        return str(start.year)
    if form == "title":
        return f"week of {start:%Y-%m-%d}" if unit == "week" else f"{start:%Y-%m-%d}"
    return f"{start:%b} {start.day}"
