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
is about 9,000 words. The alignment (`align`, for display) is exact (dynamic
programming) while the part left after the common prefix and suffix holds at most
`ALIGN_CELLS` word pairs; beyond that it is anchored on the longest common runs
(`difflib`) and each gap aligned exactly when small enough, so its edit count may
then exceed the distance slightly. The WER is always the exact distance.
"""

from __future__ import annotations

import difflib
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

MAX_WORDS = 20_000
ALIGN_CELLS = 250_000

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


def align(reference: Sequence[str], hypothesis: Sequence[str]) -> list[Run]:
    """The word alignment of `hypothesis` against `reference`, as runs (see `Run`).

    Equal runs are maximal; consecutive steps of one kind are merged into one run.
    Exact (a minimal edit script) while the differing middle part is at most
    `ALIGN_CELLS` word pairs; otherwise anchored on common runs (module doc).
    """
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
    middle_a, middle_b = a[prefix : len(a) - suffix], b[prefix : len(b) - suffix]
    if len(middle_a) * len(middle_b) <= ALIGN_CELLS:
        _exact(middle_a, middle_b, out)
    else:
        _anchored(middle_a, middle_b, out)
    out.extend(("equal", w, w) for w in a[len(a) - suffix :])


def _anchored(a: list[str], b: list[str], out: list[tuple[Op, str | None, str | None]]) -> None:
    """Large inputs: equal runs from difflib, the gaps between them aligned on their own."""
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    i = j = 0
    for block in matcher.get_matching_blocks():
        gap_a, gap_b = a[i : block.a], b[j : block.b]
        if len(gap_a) * len(gap_b) <= ALIGN_CELLS:
            _exact(gap_a, gap_b, out)
        else:  # still too large: pair words up in order, the rest deleted or inserted
            common = min(len(gap_a), len(gap_b))
            out.extend(("substitute", x, y) for x, y in zip(gap_a, gap_b, strict=False))
            out.extend(("delete", x, None) for x in gap_a[common:])
            out.extend(("insert", None, y) for y in gap_b[common:])
        out.extend(("equal", w, w) for w in a[block.a : block.a + block.size])
        i, j = block.a + block.size, block.b + block.size


def _exact(a: list[str], b: list[str], out: list[tuple[Op, str | None, str | None]]) -> None:
    """A minimal edit script by dynamic programming with a backtrace (len(a) x len(b) cells).

    Ties prefer a diagonal step (equal or substitute), then a deletion.
    """
    n, m = len(a), len(b)
    table = [list(range(m + 1))]
    for i in range(1, n + 1):
        above = table[-1]
        row = [i] + [0] * m
        word = a[i - 1]
        for j in range(1, m + 1):
            diagonal = above[j - 1] + (word != b[j - 1])
            row[j] = min(diagonal, above[j] + 1, row[j - 1] + 1)
        table.append(row)
    steps: list[tuple[Op, str | None, str | None]] = []
    i, j = n, m
    while i or j:
        if i and j and table[i][j] == table[i - 1][j - 1] + (a[i - 1] != b[j - 1]):
            op: Op = "equal" if a[i - 1] == b[j - 1] else "substitute"
            steps.append((op, a[i - 1], b[j - 1]))
            i, j = i - 1, j - 1
        elif i and table[i][j] == table[i - 1][j] + 1:
            steps.append(("delete", a[i - 1], None))
            i -= 1
        else:
            steps.append(("insert", None, b[j - 1]))
            j -= 1
    out.extend(reversed(steps))
