"""Declared pipelines: `config` reads a TOML file of stage parameters, `stages` holds the stages
(each a call of one library function), `runner` runs them in order and skips what is up to date."""

__all__ = [
    "config",
    "runner",
    "stages",
]
