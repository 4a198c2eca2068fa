"""Times as the log stores them, milliseconds since the epoch, and the zone
the pages show them in."""

import datetime
from zoneinfo import ZoneInfo

from flask import current_app

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def zone():
    return ZoneInfo(current_app.config["DISPLAY_TIMEZONE"])


def ms(when):
    return (when - EPOCH) // datetime.timedelta(milliseconds=1)


def instant(ms):
    """``ms`` as an aware UTC datetime, or None for a value no datetime can
    hold: received_at is whatever the writer stored, and a tampered row can
    hold anything."""
    try:
        return EPOCH + datetime.timedelta(milliseconds=ms)
    except (OverflowError, TypeError):
        return None
