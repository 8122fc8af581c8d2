"""Raw Incucyte archives: the ``ScanData`` folder layout and file names (issue 23).

An Incucyte system keeps its images as
``EssenFiles/ScanData/YYMM/DD/HHMM/<vessel id>/<well>-<field>-<channel>.tif``: the scan's date and
time are the folder path, the vessel (plate or flask) its folder, and well, field (the image's
location in the well) and channel the file name (``B2-1-Ph.tif``, ``A1-1-C1.tif``). Phase and
brightfield channels are the images CLANet reads; fluorescence channels are recognised, so a
scan can ignore and count them.

Pure functions only: no file system access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from clanet_store.exports.names import NameParseError, parse_well

SCAN_FOLDER = "ScanData"
# Channels CLANet reads (phase contrast, brightfield) and fluorescence channels (ignored).
TRANSMITTED_CHANNELS = ("Ph", "P", "BF")
_FLUORESCENCE = re.compile(r"^(C\d|G|R|B|N|NIR)$")
_NAME = re.compile(r"^(?P<well>[^-]+)-(?P<field>\d+)-(?P<channel>[A-Za-z0-9]+)\.(?P<ext>tiff?)$")
_TIME_PARTS = (
    ("YYMM", re.compile(r"^\d{4}$")),
    ("DD", re.compile(r"^\d{2}$")),
    ("HHMM", re.compile(r"^\d{4}$")),
)


@dataclass(frozen=True, slots=True)
class ArchiveImage:
    """The fields of one archive image: from its folders (time, vessel) and its name."""

    vessel: str
    well: str
    location: int
    channel: str
    acquired_at: datetime

    @property
    def fluorescence(self) -> bool:
        """True for a fluorescence channel (ignored by CLANet)."""
        return self.channel not in TRANSMITTED_CHANNELS


def is_archive_path(folders: tuple[str, ...], root_name: str) -> bool:
    """Whether a file in these folders (below the scanned root, called ``root_name``) lies in a
    ``ScanData`` tree: the root or one of the folders is called ``ScanData``."""
    return root_name == SCAN_FOLDER or SCAN_FOLDER in folders


def parse_archive_path(folders: tuple[str, ...], name: str, root_name: str = "") -> ArchiveImage:
    """Parse ``.../ScanData/YYMM/DD/HHMM/<vessel>/<name>``; ``folders`` are the folders below the
    scanned root, ``root_name`` the root's own name (a root that is ``ScanData`` itself). Raise
    ``NameParseError`` with the reason for a malformed time path or file name."""
    if not is_archive_path(folders, root_name):
        raise NameParseError(f"not under a {SCAN_FOLDER} folder")
    below = folders[folders.index(SCAN_FOLDER) + 1 :] if SCAN_FOLDER in folders else folders
    if len(below) != 4:
        raise NameParseError(
            f"archive path {'/'.join(below) or '.'} is not YYMM/DD/HHMM/<vessel> "
            f"below {SCAN_FOLDER}"
        )
    for (what, pattern), part in zip(_TIME_PARTS, below, strict=False):
        if not pattern.match(part):
            raise NameParseError(f"time folder {part!r} is not {what}")
    yymm, dd, hhmm, vessel = below
    try:
        acquired = datetime(
            2000 + int(yymm[:2]), int(yymm[2:]), int(dd), int(hhmm[:2]), int(hhmm[2:])
        )
    except ValueError as exc:
        raise NameParseError(f"time path {yymm}/{dd}/{hhmm} is not a valid date: {exc}") from None
    m = _NAME.match(name)
    if m is None:
        raise NameParseError("file name is not <well>-<field>-<channel>.tif")
    channel = m.group("channel")
    if channel not in TRANSMITTED_CHANNELS and not _FLUORESCENCE.match(channel):
        raise NameParseError(
            f"channel {channel!r} is neither phase / brightfield "
            f"({', '.join(TRANSMITTED_CHANNELS)}) nor fluorescence (C1, C2, ..., G, R, B, N, NIR)"
        )
    field = m.group("field")
    if field.startswith("0"):
        raise NameParseError(f"field {field!r} must be a positive integer without leading zero")
    return ArchiveImage(
        vessel=vessel,
        well=parse_well(m.group("well")),
        location=int(field),
        channel=channel,
        acquired_at=acquired,
    )
