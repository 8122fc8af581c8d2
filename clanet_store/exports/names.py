"""Incucyte export file names: parse and format (SPEC section 1).

Grammar: ``<prefix>[_<channel>]_<well>_<location>_<timestamp>[_<crop>].<ext>``

* prefix: experiment or vessel name; any characters but ``/``, may contain spaces, hyphens and
  underscores (``VID1709``, ``NCI H1975``, ``HS-5``).
* channel: optional, one of ``Phase``, ``phase``, ``Ph``, ``C1``, ``C2``.
* well: row ``A``-``P`` and column ``1``-``24``, no leading zero (``G7``, ``B10``, ``P24``).
* location: integer image number within the well (no leading zero, ``1`` upwards).
* timestamp: elapsed ``DDdHHhMMm`` (days any number of digits, hours 00-23, minutes 00-59) or
  absolute ``YYYYyMMmDDdHHhMMm``.
* crop: optional trailing integer (LIVECell quarter crops).
* ext: jpg, jpeg, png, tif, tiff in any case.

Pure functions only: no file system access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

CHANNELS = ("Phase", "phase", "Ph", "C1", "C2")
EXTENSIONS = ("jpg", "jpeg", "png", "tif", "tiff")
WELL_ROWS = "ABCDEFGHIJKLMNOP"
WELL_COLUMNS = 24

_NAME = re.compile(
    r"^(?P<prefix>.+?)"
    r"(?:_(?P<channel>" + "|".join(CHANNELS) + r"))?"
    r"_(?P<well>[A-Za-z]+\d+)"
    r"_(?P<location>\d+)"
    r"_(?P<timestamp>\d+y\d+m\d+d\d+h\d+m|\d+d\d+h\d+m)"
    r"(?:_(?P<crop>\d+))?"
    r"\.(?P<ext>[A-Za-z]+)$"
)
_ELAPSED = re.compile(r"^(\d+)d(\d{2})h(\d{2})m$")
_ABSOLUTE = re.compile(r"^(\d{4})y(\d{2})m(\d{2})d(\d{2})h(\d{2})m$")
_WELL = re.compile(r"^([A-P])([1-9]\d?)$")


class NameParseError(ValueError):
    """A file name that does not follow the Incucyte export grammar; the message is the reason."""


@dataclass(frozen=True, slots=True)
class ImageName:
    """The fields of one export file name.

    ``elapsed_minutes`` is set for elapsed stamps, ``acquired_at`` for absolute ones; exactly one
    of them is not None.
    """

    prefix: str
    well: str
    location: int
    ext: str
    channel: str | None = None
    elapsed_minutes: int | None = None
    acquired_at: datetime | None = None
    crop: int | None = None

    @property
    def timepoint_h(self) -> float | None:
        """Hours since seeding for elapsed stamps (exact minutes), None for absolute stamps."""
        return None if self.elapsed_minutes is None else self.elapsed_minutes / 60.0


def parse_well(well: str) -> str:
    """A well name (row A-P, column 1-24, no leading zero); ``NameParseError`` otherwise."""
    m = _WELL.match(well)
    if m is None:
        raise NameParseError(
            f"well {well!r} is not a row A-P followed by a column 1-{WELL_COLUMNS}"
        )
    if int(m.group(2)) > WELL_COLUMNS:
        raise NameParseError(f"well {well!r}: column {m.group(2)} is outside 1-{WELL_COLUMNS}")
    return well


def _parse_timestamp(stamp: str) -> tuple[int | None, datetime | None]:
    m = _ELAPSED.match(stamp)
    if m is not None:
        days, hours, minutes = (int(g) for g in m.groups())
        if hours > 23 or minutes > 59:
            raise NameParseError(f"time stamp {stamp!r}: hours must be 00-23 and minutes 00-59")
        return (days * 24 + hours) * 60 + minutes, None
    m = _ABSOLUTE.match(stamp)
    if m is not None:
        try:
            return None, datetime(*(int(g) for g in m.groups()))  # type: ignore[misc]
        except ValueError as exc:
            raise NameParseError(f"time stamp {stamp!r} is not a valid date: {exc}") from None
    raise NameParseError(f"time stamp {stamp!r} is neither DDdHHhMMm nor YYYYyMMmDDdHHhMMm")


def parse_name(name: str) -> ImageName:
    """Parse a bare file name; raise ``NameParseError`` with the reason if it is malformed."""
    if "/" in name or "\\" in name:
        raise NameParseError("expected a bare file name, got a path")
    _, dot, ext = name.rpartition(".")
    if not dot or ext.lower() not in EXTENSIONS:
        raise NameParseError(f"extension {ext!r} is not one of {', '.join(EXTENSIONS)}")
    m = _NAME.match(name)
    if m is None:
        raise NameParseError(
            "does not match <prefix>[_<channel>]_<well>_<location>_<timestamp>[_<crop>].<ext>"
        )
    prefix = m.group("prefix")
    if prefix.strip() != prefix or not prefix:
        raise NameParseError(f"prefix {prefix!r} is empty or has leading/trailing spaces")
    location = m.group("location")
    if location.startswith("0"):
        raise NameParseError(
            f"location {location!r} must be a positive integer without leading zero"
        )
    crop = m.group("crop")
    if crop is not None and len(crop) > 1 and crop.startswith("0"):
        raise NameParseError(f"crop {crop!r} must be an integer without leading zero")
    elapsed, acquired = _parse_timestamp(m.group("timestamp"))
    return ImageName(
        prefix=prefix,
        channel=m.group("channel"),
        well=parse_well(m.group("well")),
        location=int(location),
        elapsed_minutes=elapsed,
        acquired_at=acquired,
        crop=None if crop is None else int(crop),
        ext=m.group("ext"),
    )


def format_timestamp(
    elapsed_minutes: int | None = None, acquired_at: datetime | None = None
) -> str:
    """The time stamp token for elapsed minutes (``02d12h00m``) or an absolute time."""
    if (elapsed_minutes is None) == (acquired_at is None):
        raise ValueError("give exactly one of elapsed_minutes and acquired_at")
    if acquired_at is not None:
        return acquired_at.strftime("%Yy%mm%dd%Hh%Mm")
    assert elapsed_minutes is not None
    if elapsed_minutes < 0:
        raise ValueError("elapsed time cannot be negative")
    hours, minutes = divmod(elapsed_minutes, 60)
    days, hours = divmod(hours, 24)
    return f"{days:02d}d{hours:02d}h{minutes:02d}m"


def format_name(name: ImageName) -> str:
    """The export file name for these fields; ``parse_name(format_name(n)) == n`` for valid n."""
    parts = [name.prefix]
    if name.channel is not None:
        parts.append(name.channel)
    parts += [
        name.well,
        str(name.location),
        format_timestamp(name.elapsed_minutes, name.acquired_at),
    ]
    if name.crop is not None:
        parts.append(str(name.crop))
    text = "_".join(parts) + "." + name.ext
    try:
        back = parse_name(text)
    except NameParseError as exc:
        raise ValueError(f"fields do not form a valid name: {exc}") from None
    if back != name:
        raise ValueError(f"ambiguous fields: {text!r} would parse as {back}")
    return text
