"""Open-set cell line authentication of sequences against a reference library (issue 21).

The library is a set of sequence vectors (`stores.sequence_embeddings`), each with its cell line
and its **unit**: the batch key ``line/batch``, or ``line/batch/well`` for a line held in one
batch only (other wells stand in for other batches, as in `learn.encoder_metrics`). Rules:

* **Line score.** A query's score for line L is the mean cosine similarity to its ``top_m`` (3)
  most similar reference sequences of L, never from the query's own unit (images of one flask
  are correlated: its own batch would vouch for it). A line with no reference outside that unit
  has no score.
* **Calibration** (leave one batch out, inside the library): every library sequence (a seeded
  sample of at most ``max_sequences``) is scored against the library without its own unit. Its
  own line's score is a *genuine score*; its own line's score minus the best other line's is a
  *genuine margin*. With n of them and false-alarm rate a, a threshold is the k-th smallest
  value, k = floor(a (n + 1)) (the split-conformal rank): a new sequence exchangeable with the
  library's falls strictly below it with probability at most k / (n + 1) <= a. k = 0 (fewer
  than 1/a - 1 values: 19 for 5 %) is an error, never a threshold that cannot fire.
* **Verdict** of a query claimed to be line C: ``unknown`` when its best line score is below
  the unknown threshold (no line of the library matches as well as a of its own sequences do);
  else ``mismatch`` when C has no score, or C's margin (score of C minus the best other line) is
  below min(margin threshold, 0) (another line matches better, by more than all but a of the
  library's own sequences lose to another line): the verdict names that line and the margin;
  else ``unknown`` when the margin is below 0 (another line matches better, but by no more than
  the library's own sequences often do: the label is neither confirmed nor refuted); else
  ``consistent`` (C is the best match). ``reason`` says which rule decided. The two calibrated
  rules (unknown threshold, mismatch) each falsely alarm on a sequence of a known line with
  probability at most a; how often a known line is not the best match is the encoder's (it is
  the 1 - consistent rate of ``evaluate``).
* **Batch verdict.** A batch's sequences are correlated, so a batch is one unit: its line scores
  are the means of its sequences' line scores, judged by the same rules and thresholds (a mean
  of correlated scores spreads no more than one score; ``evaluate`` reports the realised rate).
* **Evidence**: the ``nearest`` reference sequences outside the query's unit (cosine distance
  1 - similarity; for a batch, to the mean of its sequences' similarities) and the top line
  scores.

`evaluate_library` measures the rules on a library: leave-one-batch-out verdicts of known lines
(calibrated without the held-out unit), ``unknown`` rates with every unit of one line removed,
and ``mismatch`` rates with each held-out unit given every wrong label.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from clanet_store.errors import ClanetError

TOP_M = 3
FALSE_ALARM = 0.05
# Calibration sequences: 500 give the 5 % threshold as the 25th smallest of 500 scores; 1000
# took 1.4 s against a 10,000 x 1536 library (benchmarks/bench_authenticate.py).
MAX_CALIBRATION = 500
NEAREST = 5
TOP_LINES = 3
QUERY_CHUNK = 256  # queries per similarity block: 256 x 100,000 float32 = 100 MB
CONSISTENT, MISMATCH, UNKNOWN = "consistent", "mismatch", "unknown"


@dataclass(frozen=True, eq=False)
class Library:
    """Reference sequences of one encoder: unit-length vectors (n, d) and, per row, the cell
    line, the unit (module doc), the sequence id and its first image's id (evidence)."""

    model_id: str
    vectors: np.ndarray
    lines: np.ndarray
    units: np.ndarray
    sequences: np.ndarray
    images: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.vectors)
        if any(len(a) != n for a in (self.lines, self.units, self.sequences, self.images)):
            raise ValueError("library columns differ in length")

    @property
    def line_names(self) -> tuple[str, ...]:
        return tuple(np.unique(self.lines).tolist())

    def subset(self, keep: np.ndarray) -> Library:
        """The rows where ``keep`` is True."""
        return Library(
            self.model_id,
            self.vectors[keep],
            self.lines[keep],
            self.units[keep],
            self.sequences[keep],
            self.images[keep],
        )


def unit_keys(lines: np.ndarray, batches: np.ndarray, wells: np.ndarray) -> np.ndarray:
    """Each row's unit: ``line/batch``, or ``line/batch/well`` for a line with one batch."""
    lines, batches, wells = (np.asarray(a, dtype=str) for a in (lines, batches, wells))
    units = np.char.add(np.char.add(lines, "/"), batches)
    pairs = set(zip(lines.tolist(), batches.tolist(), strict=True))
    batches_of = Counter(line for line, _ in pairs)
    single = np.array([batches_of[line] == 1 for line in lines.tolist()], dtype=bool)
    by_well = np.char.add(np.char.add(units, "/"), wells)
    return np.where(single, by_well, units)


def unit_vectors(x: np.ndarray, in_place: bool = False) -> np.ndarray:
    """Rows scaled to unit length (float32; zero rows stay zero); ``in_place``: into ``x``
    itself when it is a writeable float32 array (a 10,000 x 1536 library: no second 61 MB)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))[:, None]
    out = x if in_place and x.flags.writeable else None
    return np.divide(x, np.where(norms > 0, norms, 1), out=out)


@dataclass(frozen=True)
class Calibration:
    """Thresholds from leave-one-batch-out scores inside a library (module doc)."""

    false_alarm: float
    top_m: int
    unknown_threshold: float
    margin_threshold: float
    genuine_scores: int
    genuine_margins: int
    units: int
    lines: int

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class LineScore:
    line: str
    score: float


@dataclass(frozen=True)
class Neighbour:
    """A reference sequence near a query: line, unit, cosine distance, sequence id, its first
    image (id, and the path once a store has filled it in)."""

    line: str
    unit: str
    distance: float
    sequence_id: str
    image_id: str
    path: str | None = None


@dataclass(frozen=True)
class Verdict:
    """The verdict on one sequence or one batch claimed to be ``claimed``; ``line`` is the line
    it names (the claimed line when consistent, the better match when mismatch, None when
    unknown); ``margin`` = claimed line's score - the best other line's (None without both);
    ``sequences``: the ids of the sequences judged (one, or a batch's)."""

    subject: str
    unit: str
    claimed: str
    verdict: str
    line: str | None
    best_score: float | None
    claimed_score: float | None
    margin: float | None
    reason: str
    sequences: tuple[str, ...]
    top_lines: tuple[LineScore, ...]
    nearest: tuple[Neighbour, ...]

    def as_dict(self) -> dict:
        return asdict(self)


def _cosine(queries: np.ndarray, library: Library) -> np.ndarray:
    """Similarities of unit-length queries to every library row, (q, n) float32."""
    return unit_vectors(queries) @ library.vectors.T


def line_scores(
    sims: np.ndarray, allowed: np.ndarray, line_codes: np.ndarray, n_lines: int, top_m: int
) -> np.ndarray:
    """(q, n_lines): mean of each line's ``top_m`` highest similarities among the allowed
    references (fewer when fewer are allowed); NaN where a line has none."""
    out = np.full((len(sims), n_lines), np.nan, dtype=np.float64)
    order = np.argsort(line_codes, kind="stable")
    bounds = np.searchsorted(line_codes[order], np.arange(n_lines + 1))
    for line in range(n_lines):
        cols = order[bounds[line] : bounds[line + 1]]
        if len(cols) == 0:
            continue
        s = np.where(allowed[:, cols], sims[:, cols], -np.inf)
        m = min(top_m, len(cols))
        top = -np.partition(-s, m - 1, axis=1)[:, :m]
        finite = np.isfinite(top)
        count = finite.sum(axis=1)
        total = np.where(finite, top, 0.0).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[:, line] = np.where(count > 0, total / count, np.nan)
    return out


def _mean_finite(scores: np.ndarray) -> np.ndarray:
    """Column means over the finite values (NaN where a column has none)."""
    finite = np.isfinite(scores)
    count = finite.sum(axis=0)
    total = np.where(finite, scores, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _other_units(units: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(q, n) bool: reference row j is from another unit than query i (compared as integer
    codes: a string comparison of 256 x 10,000 units costs ~0.1 s)."""
    _, codes = np.unique(np.concatenate([units, reference]), return_inverse=True)
    return codes[: len(units), None] != codes[None, len(units) :]


def _codes(library: Library) -> tuple[tuple[str, ...], np.ndarray]:
    names = library.line_names
    return names, np.searchsorted(np.array(names), library.lines)


def _conformal(values: np.ndarray, false_alarm: float) -> float:
    """The k-th smallest value, k = floor(a (n + 1)). Raises ClanetError when k = 0: too few
    values for the rate (a threshold that never fires would state a rate it does not hold)."""
    k = int(np.floor(false_alarm * (len(values) + 1)))
    if k < 1:
        raise ClanetError(
            f"the library gives {len(values)} leave-one-batch-out scores; a false-alarm rate of "
            f"{false_alarm:.0%} needs at least {math.ceil(1 / false_alarm - 1)}: add batches or "
            "raise the rate (--false-alarm)"
        )
    return float(np.sort(values)[k - 1])


def _margins(scores: np.ndarray, claimed: np.ndarray) -> np.ndarray:
    """Score of the claimed line minus the best other line's (NaN without both; claimed -1:
    not a library line)."""
    rows = np.arange(len(scores))
    own = np.where(claimed >= 0, scores[rows, np.maximum(claimed, 0)], np.nan)
    others = scores.copy()
    others[rows[claimed >= 0], claimed[claimed >= 0]] = np.nan
    has_other = np.isfinite(others).any(axis=1)
    best_other = np.where(has_other, np.nanmax(np.where(has_other[:, None], others, 0), 1), np.nan)
    return own - best_other


def calibrate(
    library: Library,
    false_alarm: float = FALSE_ALARM,
    top_m: int = TOP_M,
    max_sequences: int = MAX_CALIBRATION,
    seed: int = 0,
) -> Calibration:
    """Leave-one-batch-out thresholds of a library (module doc). Raises ClanetError when no
    line has two units (nothing can be scored against another batch of its own line)."""
    if not 0 < false_alarm < 1:
        raise ClanetError(f"false-alarm rate must be in (0, 1), got {false_alarm}")
    names, codes = _codes(library)
    rows = np.arange(len(library.vectors))
    if len(rows) > max_sequences:
        rows = np.sort(np.random.default_rng(seed).choice(rows, max_sequences, replace=False))
    genuine, margins = [], []
    unit_codes = np.unique(library.units, return_inverse=True)[1]
    for start in range(0, len(rows), QUERY_CHUNK):
        chunk = rows[start : start + QUERY_CHUNK]
        sims = library.vectors[chunk] @ library.vectors.T
        allowed = unit_codes[chunk][:, None] != unit_codes[None, :]
        scores = line_scores(sims, allowed, codes, len(names), top_m)
        genuine.append(scores[np.arange(len(chunk)), codes[chunk]])
        margins.append(_margins(scores, codes[chunk]))
    genuine_all = np.concatenate(genuine)
    margin_all = np.concatenate(margins)
    genuine_all = genuine_all[np.isfinite(genuine_all)]
    margin_all = margin_all[np.isfinite(margin_all)]
    if len(genuine_all) == 0:
        raise ClanetError(
            "cannot calibrate: no line of the reference library has two batches "
            "(or, for a line held in one batch, two wells)"
        )
    return Calibration(
        false_alarm=false_alarm,
        top_m=top_m,
        unknown_threshold=_conformal(genuine_all, false_alarm),
        margin_threshold=min(_conformal(margin_all, false_alarm), 0.0) if len(margin_all) else 0.0,
        genuine_scores=len(genuine_all),
        genuine_margins=len(margin_all),
        units=len(np.unique(library.units)),
        lines=len(names),
    )


def _judge(
    scores: np.ndarray, claimed: int, cal: Calibration
) -> tuple[str, int | None, float, str]:
    """(verdict, index of the named line or None, margin, reason) for one row of line scores."""
    margin = float(_margins(scores[None], np.array([claimed]))[0])
    if not np.isfinite(scores).any():
        return UNKNOWN, None, margin, "no line has a reference sequence outside this batch"
    best = int(np.nanargmax(scores))
    if scores[best] < cal.unknown_threshold:
        return UNKNOWN, None, margin, "no line scores above the unknown threshold"
    if claimed < 0 or not np.isfinite(scores[claimed]):
        return MISMATCH, best, margin, "the claimed line has no reference sequence to match"
    others = scores.copy()
    others[claimed] = np.nan
    if np.isfinite(margin) and margin < cal.margin_threshold:
        return MISMATCH, int(np.nanargmax(others)), margin, "margin below the mismatch threshold"
    if np.isfinite(margin) and margin < 0:
        return UNKNOWN, None, margin, "another line matches better, within the mismatch threshold"
    return CONSISTENT, claimed, margin, "the claimed line is the best match"


def _verdict(
    subject: str,
    unit: str,
    claimed: str,
    scores: np.ndarray,
    sims: np.ndarray,
    allowed: np.ndarray,
    library: Library,
    names: tuple[str, ...],
    cal: Calibration,
    sequences: tuple[str, ...],
    nearest: int,
) -> Verdict:
    code = names.index(claimed) if claimed in names else -1
    verdict, line, margin, reason = _judge(scores, code, cal)
    finite = np.flatnonzero(np.isfinite(scores))
    ranked = finite[np.argsort(-scores[finite], kind="stable")][:TOP_LINES]
    masked = np.where(allowed, sims, -np.inf)
    count = min(nearest, int(allowed.sum()))
    near = np.argpartition(-masked, count)[:count] if 0 < count < len(masked) else np.arange(count)
    near = near[np.argsort(-masked[near], kind="stable")]

    def num(v: float) -> float | None:
        return float(v) if np.isfinite(v) else None

    return Verdict(
        subject=subject,
        unit=unit,
        claimed=claimed,
        verdict=verdict,
        line=None if line is None else names[line],
        best_score=num(scores[ranked[0]]) if len(ranked) else None,
        claimed_score=num(scores[code]) if code >= 0 else None,
        margin=num(margin),
        reason=reason,
        sequences=sequences,
        top_lines=tuple(LineScore(names[i], float(scores[i])) for i in ranked),
        nearest=tuple(
            Neighbour(
                str(library.lines[j]),
                str(library.units[j]),
                float(1 - sims[j]),
                str(library.sequences[j]),
                str(library.images[j]),
            )
            for j in near
        ),
    )


@dataclass(frozen=True)
class Authentication:
    """Verdicts of a set of query sequences, one per sequence and one per unit (batch)."""

    model_id: str
    calibration: Calibration
    sequences: tuple[Verdict, ...]
    batches: tuple[Verdict, ...]

    def as_dict(self) -> dict:
        return {
            "model_id": self.model_id,
            "calibration": self.calibration.as_dict(),
            "batches": [v.as_dict() for v in self.batches],
            "sequences": [v.as_dict() for v in self.sequences],
        }


def authenticate(
    library: Library,
    calibration: Calibration,
    vectors: np.ndarray,
    units: Sequence[str],
    claimed: Sequence[str],
    sequence_ids: Sequence[str],
    model_id: str,
    nearest: int = NEAREST,
) -> Authentication:
    """Verdicts of query sequences (``vectors`` of ``model_id``, their units and claimed
    lines) against the library; a batch's claimed line is its first sequence's. Raises
    ClanetError for vectors of another model or another width."""
    if model_id != library.model_id:
        raise ClanetError(
            f"query vectors come from model {model_id}, the library from {library.model_id}: "
            "embeddings of different encoders cannot be compared"
        )
    if vectors.shape[1:] != library.vectors.shape[1:]:
        raise ClanetError(
            f"query vectors are {vectors.shape[1:]}, the library's {library.vectors.shape[1:]}"
        )
    names, codes = _codes(library)
    units = np.asarray(units, dtype=str)
    sims = _cosine(vectors, library)
    allowed = _other_units(units, library.units)
    scores = line_scores(sims, allowed, codes, len(names), calibration.top_m)
    per_sequence = tuple(
        _verdict(
            str(sequence_ids[i]),
            str(units[i]),
            str(claimed[i]),
            scores[i],
            sims[i],
            allowed[i],
            library,
            names,
            calibration,
            (str(sequence_ids[i]),),
            nearest,
        )
        for i in range(len(units))
    )
    per_batch = []
    for unit in dict.fromkeys(units.tolist()):
        rows = np.flatnonzero(units == unit)
        unit_scores = _mean_finite(scores[rows])
        per_batch.append(
            _verdict(
                unit,
                unit,
                str(claimed[rows[0]]),
                unit_scores,
                sims[rows].mean(axis=0),
                allowed[rows[0]],
                library,
                names,
                calibration,
                tuple(str(sequence_ids[i]) for i in rows),
                nearest,
            )
        )
    return Authentication(model_id, calibration, per_sequence, tuple(per_batch))


@dataclass(frozen=True)
class VerdictRates:
    """How often each verdict was given (fractions of ``n``); ``named_true``: the share of all
    ``n`` that were ``mismatch`` naming the subject's true line."""

    n: int
    consistent: float | None
    mismatch: float | None
    unknown: float | None
    named_true: float | None

    def as_dict(self) -> dict:
        return asdict(self)


def _rates(verdicts: list[Verdict], truth: list[str]) -> VerdictRates:
    n = len(verdicts)

    def share(count: int) -> float | None:
        return count / n if n else None

    return VerdictRates(
        n=n,
        consistent=share(sum(v.verdict == CONSISTENT for v in verdicts)),
        mismatch=share(sum(v.verdict == MISMATCH for v in verdicts)),
        unknown=share(sum(v.verdict == UNKNOWN for v in verdicts)),
        named_true=share(
            sum(v.verdict == MISMATCH and v.line == t for v, t in zip(verdicts, truth, strict=True))
        ),
    )


@dataclass(frozen=True)
class LibraryEvaluation:
    """`evaluate_library`'s result: verdict rates per experiment and level (sequence, batch).

    ``known``: each unit held out, claimed as its own line, against the rest (ideal: all
    consistent; its false alarms are the 1 - consistent share). ``new_line``: every unit of
    one line held out, claimed as that line (ideal: all unknown). ``wrong_label``: each
    held-out unit claimed as every other line of the library (ideal: all mismatch naming the
    true line). Units whose line has no other unit cannot be held out (``units_skipped``)."""

    model_id: str
    false_alarm: float
    top_m: int
    lines: int
    units: int
    sequences: int
    units_skipped: int
    lines_skipped: int
    known: dict[str, VerdictRates]
    new_line: dict[str, VerdictRates]
    wrong_label: dict[str, VerdictRates]

    def as_dict(self) -> dict:
        out = asdict(self)
        for name in ("known", "new_line", "wrong_label"):
            out[name] = {level: r.as_dict() for level, r in getattr(self, name).items()}
        return out


def _held_out(
    library: Library,
    keep: np.ndarray,
    claims: list[str],
    false_alarm: float,
    top_m: int,
    seed: int,
) -> list[Authentication] | None:
    """The held-out rows (``~keep``) authenticated against ``library.subset(keep)``, once per
    claimed line; None when the rest cannot be calibrated."""
    rest = library.subset(keep)
    try:
        cal = calibrate(rest, false_alarm, top_m, seed=seed)
    except ClanetError:
        return None
    out = ~keep
    return [
        authenticate(
            rest,
            cal,
            library.vectors[out],
            library.units[out],
            [claim] * int(out.sum()),
            library.sequences[out],
            library.model_id,
            nearest=0,
        )
        for claim in claims
    ]


def evaluate_library(
    library: Library, false_alarm: float = FALSE_ALARM, top_m: int = TOP_M, seed: int = 0
) -> LibraryEvaluation:
    """Leave-one-batch-out, leave-one-line-out and wrong-label verdict rates (see
    `LibraryEvaluation`); every held-out set is calibrated without it."""
    found: dict[str, dict[str, tuple[list[Verdict], list[str]]]] = {
        name: {"sequence": ([], []), "batch": ([], [])}
        for name in ("known", "new_line", "wrong_label")
    }

    def add(name: str, auth: Authentication, truth: str) -> None:
        for level, verdicts in (("sequence", auth.sequences), ("batch", auth.batches)):
            found[name][level][0].extend(verdicts)
            found[name][level][1].extend([truth] * len(verdicts))

    units_skipped = lines_skipped = 0
    for unit in np.unique(library.units):
        held = library.units == unit
        line = str(library.lines[held][0])
        others = [n for n in library.line_names if n != line]
        done = _held_out(library, ~held, [line, *others], false_alarm, top_m, seed)
        if done is None or not np.any(library.lines[~held] == line):
            units_skipped += 1
            continue
        add("known", done[0], line)
        for auth in done[1:]:
            add("wrong_label", auth, line)
    for line in library.line_names:
        held = library.lines == line
        done = _held_out(library, ~held, [line], false_alarm, top_m, seed)
        if done is None:
            lines_skipped += 1
            continue
        add("new_line", done[0], line)
    rates = {
        name: {level: _rates(*pair) for level, pair in levels.items()}
        for name, levels in found.items()
    }
    return LibraryEvaluation(
        model_id=library.model_id,
        false_alarm=false_alarm,
        top_m=top_m,
        lines=len(library.line_names),
        units=len(np.unique(library.units)),
        sequences=len(library.vectors),
        units_skipped=units_skipped,
        lines_skipped=lines_skipped,
        **rates,
    )
