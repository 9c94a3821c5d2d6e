"""Word error rate between two transcripts, and the word alignment behind a diff view.

Pure functions, no I/O. The transcription A/B report compares each provider's text
with the reference provider's (the first that succeeded) through these.

Normalisation (`normalise`), applied to both texts before anything is compared:

1. Unicode NFKC (full-width and compatibility forms become plain letters/digits);
2. case-folded (`str.casefold`: "Straße" and "STRASSE" are equal);
3. Cyrillic yo (U+0451) becomes ye (U+0435): Russian texts write either; providers differ;
4. apostrophes inside words are dropped (`don't` -> `dont`, `д'Артаньян` -> `дартаньян`);
5. every other punctuation character (Unicode category P*: `.,!?;:` `«»` `—` `…`
   `¿` ...) and every symbol (category S*: `$`, `+`, `№`, emoji) becomes a space;
6. whitespace collapsed: the words are what `str.split()` leaves.

Digits are kept as they are ("2" and "two" are different words: no number
normalisation).

WER = (substitutions + deletions + insertions) / number of reference words, the
Levenshtein distance over the two word lists. Edge cases: both empty -> 0.0; an
empty reference with words in the hypothesis -> 1.0 (complete disagreement, the
rate is otherwise undefined); a hypothesis may exceed 1.0 (insertions count).

Cost bounds: the distance is computed with the bit-parallel algorithm of Myers
(1999) in Hyyrö's form for edit distance, on Python integers: one step per
hypothesis word on integers as wide as the reference (20,000 x 20,000 words in
well under a second). Texts of more than `MAX_WORDS` words (after normalisation)
on either side are not compared (`word_error_rate` returns None): an hour of speech
is about 9,000 words. The alignment (`align`, for display) is a minimal edit script
from the same bit vectors, kept per hypothesis word (two integers as wide as the
reference each) and walked back with popcounts: 10,000 x 10,000 words take about
25 MB and a fraction of a second whatever the texts; longer texts (more than
`ALIGN_MAX_WORDS` on either side) are not aligned (None).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MAX_WORDS = 20_000
ALIGN_MAX_WORDS = 10_000

_APOSTROPHES = frozenset("'\u2019\u02bc\u2018`\u00b4")
Op = Literal["equal", "substitute", "delete", "insert"]


def _is_separator(char: str) -> bool:
    return unicodedata.category(char)[0] in ("P", "S")


def normalise(text: str) -> list[str]:
    """The words of `text` after the module's normalisation rules (see the module doc)."""
    folded = unicodedata.normalize("NFKC", text).casefold().replace("\u0451", "\u0435")
    chars: list[str] = []
    for index, char in enumerate(folded):
        if char in _APOSTROPHES:
            inside = (
                0 < index < len(folded) - 1
                and folded[index - 1].isalnum()
                and folded[index + 1].isalnum()
            )
            chars.append("" if inside else " ")
        elif _is_separator(char):
            chars.append(" ")
        else:
            chars.append(char)
    return "".join(chars).split()


def distance(reference: Sequence[str], hypothesis: Sequence[str]) -> int:
    """The Levenshtein distance between two word lists (substitutions + deletions + insertions).

    Bit-parallel (Myers / Hyyrö): bit i of the vertical delta vectors stands for
    reference word i; one pass over the hypothesis. Callers bound the sizes
    (`MAX_WORDS`).
    """
    m = len(reference)
    if m == 0:
        return len(hypothesis)
    if not hypothesis:
        return m
    # Bit masks of the positions of each reference word.
    peq: dict[str, int] = {}
    for i, word in enumerate(reference):
        peq[word] = peq.get(word, 0) | (1 << i)
    mask = (1 << m) - 1
    last = 1 << (m - 1)
    pv, mv, score = mask, 0, m
    for word in hypothesis:
        eq = peq.get(word, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = mv | ~(xh | pv)
        mh = pv & xh
        if ph & last:
            score += 1
        elif mh & last:
            score -= 1
        # `| 1`: the top row of the table is 0, 1, 2, ... (global distance, not a search).
        ph = (ph << 1) | 1
        mh <<= 1
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv & mask
    return score


def word_error_rate(reference: str, hypothesis: str) -> float | None:
    """WER of `hypothesis` against `reference` (texts, normalised here), or None when
    either side has more than `MAX_WORDS` words. Rounded to 4 decimals."""
    ref, hyp = normalise(reference), normalise(hypothesis)
    return rate(ref, hyp)


def rate(reference: Sequence[str], hypothesis: Sequence[str]) -> float | None:
    """WER of two normalised word lists (see `word_error_rate`)."""
    if len(reference) > MAX_WORDS or len(hypothesis) > MAX_WORDS:
        return None
    if not reference:
        return 0.0 if not hypothesis else 1.0
    return round(distance(reference, hypothesis) / len(reference), 4)


@dataclass(frozen=True)
class Run:
    """A run of one kind of alignment step: `ref` words against `hyp` words.

    equal: the same words on both sides; substitute: as many words on both sides,
    each replaced; delete: reference words the hypothesis lacks (`hyp` empty);
    insert: hypothesis words the reference lacks (`ref` empty).
    """

    op: Op
    ref: tuple[str, ...]
    hyp: tuple[str, ...]


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> list[Run] | None:
    """The word alignment of `hypothesis` against `reference`, as runs (see `Run`), or
    None when either side has more than `ALIGN_MAX_WORDS` words.

    A minimal edit script (its edits are `distance`); equal runs are maximal and
    consecutive steps of one kind are merged into one run.
    """
    if len(reference) > ALIGN_MAX_WORDS or len(hypothesis) > ALIGN_MAX_WORDS:
        return None
    steps: list[tuple[Op, str | None, str | None]] = []
    _align_into(list(reference), list(hypothesis), steps)
    runs: list[Run] = []
    for op, ref_word, hyp_word in steps:
        ref = (ref_word,) if ref_word is not None else ()
        hyp = (hyp_word,) if hyp_word is not None else ()
        if runs and runs[-1].op == op:
            previous = runs[-1]
            runs[-1] = Run(op, previous.ref + ref, previous.hyp + hyp)
        else:
            runs.append(Run(op, ref, hyp))
    return runs


def edits(runs: Sequence[Run]) -> int:
    """The number of word edits an alignment holds (its substitutions, deletions, insertions)."""
    return sum(max(len(r.ref), len(r.hyp)) for r in runs if r.op != "equal")


def _align_into(a: list[str], b: list[str], out: list[tuple[Op, str | None, str | None]]) -> None:
    prefix = 0
    while prefix < len(a) and prefix < len(b) and a[prefix] == b[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < len(a) - prefix
        and suffix < len(b) - prefix
        and a[len(a) - 1 - suffix] == b[len(b) - 1 - suffix]
    ):
        suffix += 1
    out.extend(("equal", w, w) for w in a[:prefix])
    _exact(a[prefix : len(a) - suffix], b[prefix : len(b) - suffix], out)
    out.extend(("equal", w, w) for w in a[len(a) - suffix :])


def _exact(a: list[str], b: list[str], out: list[tuple[Op, str | None, str | None]]) -> None:
    """A minimal edit script: `distance`'s bit vectors kept per hypothesis word, then a
    walk back from the last cell.

    Column j's vectors give its cells: D[i][j] = j + (+1 deltas) - (-1 deltas) among
    the first i rows, two popcounts. Memory: two len(a)-bit integers per word of `b`.
    Ties prefer a diagonal step (equal or substitute), then a deletion.
    """
    m = len(a)
    if not m or not b:
        out.extend(("delete", x, None) for x in a)
        out.extend(("insert", None, y) for y in b)
        return
    peq: dict[str, int] = {}
    for i, word in enumerate(a):
        peq[word] = peq.get(word, 0) | (1 << i)
    mask = (1 << m) - 1
    pv, mv = mask, 0  # column 0: D[i][0] = i
    plus, minus = [pv], [mv]
    for word in b:
        eq = peq.get(word, 0)
        xv = eq | mv
        xh = (((eq & pv) + pv) ^ pv) | eq
        ph = (mv | ~(xh | pv)) << 1 | 1
        mh = (pv & xh) << 1
        pv = (mh | ~(xv | ph)) & mask
        mv = ph & xv & mask
        plus.append(pv)
        minus.append(mv)

    def cell(i: int, j: int) -> int:
        rows = (1 << i) - 1
        return j + (plus[j] & rows).bit_count() - (minus[j] & rows).bit_count()

    steps: list[tuple[Op, str | None, str | None]] = []
    i, j = m, len(b)
    here = cell(i, j)
    while i or j:
        if i and j:
            diagonal = cell(i - 1, j - 1)
            if here == diagonal + (a[i - 1] != b[j - 1]):
                steps.append(
                    ("equal" if a[i - 1] == b[j - 1] else "substitute", a[i - 1], b[j - 1])
                )
                i, j, here = i - 1, j - 1, diagonal
                continue
        if i:
            above = cell(i - 1, j)
            if here == above + 1:
                steps.append(("delete", a[i - 1], None))
                i, here = i - 1, above
                continue
        steps.append(("insert", None, b[j - 1]))
        j -= 1
        here = cell(i, j)
    out.extend(reversed(steps))
