"""Incucyte exports and microscopy files (bioio): find the images, parse their names, read sizes
from headers, summarise, and write synthetic exports."""

__all__ = [
    "archive",
    "headers",
    "microscopy",
    "names",
    "ngff",
    "scan",
    "summary",
    "synth",
]
