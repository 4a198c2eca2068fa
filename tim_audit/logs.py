"""Log output: one line per record, as text or, with LOG_FORMAT = "json",
one JSON object per line for log shippers."""

import datetime
import json
import logging

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """time, level, logger and message, plus the structured fields a record
    carries in ``extra={"fields": {...}}`` (each callback's outcome, code,
    GroupId and duration)."""

    def format(self, record):
        when = datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
        entry = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format):
    """Give the root logger one handler, unless someone (an operator's
    dictConfig, a test runner) already has. Left alone, waitress-serve adds a
    root handler after the app exists, beside Flask's own on the app's
    logger, and every line came out twice."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root.addHandler(handler)
