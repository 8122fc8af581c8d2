"""The HTML report: `collect` reads what to show from a store, `figures` draws it (matplotlib),
`page` lays it out, `build.write_report` puts them together."""

__all__ = [
    "build",
    "collect",
    "figures",
    "page",
]
