"""Incucyte exports: find the images, parse their names, read sizes from headers, summarise,
and write synthetic exports."""

__all__ = [
    "headers",
    "names",
    "scan",
    "summary",
    "synth",
]
