"""How the ``swarm`` commands print quantities, one unit each: compute as hours:minutes, times in UTC, marked.

Usage::

    hours_minutes(0.0168)                          # '0:01'
    utc_time("2026-12-01T14:05:09.51+01:00")       # '2026-12-01 13:05 UTC'
"""

from __future__ import annotations

from datetime import datetime, timezone


def hours_minutes(hours: float) -> str:
    """``hours`` as ``H:MM``, to the nearest minute (``0:00`` for less than half a minute)."""
    minutes = round(max(hours, 0.0) * 60) if hours == hours else 0  # NaN: nothing measured
    return f"{minutes // 60}:{minutes % 60:02d}"


def utc_time(iso: str) -> str:
    """An ISO 8601 time as ``YYYY-MM-DD HH:MM UTC``; a time without a zone is taken as UTC (the coordinator stores
    UTC), ``""`` stays ``""`` and text that is no time is returned as it is."""
    if not iso:
        return ""
    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return iso
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
