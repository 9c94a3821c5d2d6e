"""Word error rate and alignment (`ai_service.wer`), against hand-computed cases."""

# Russian test texts hold Cyrillic letters that look like Latin ones, on purpose.
# ruff: noqa: RUF001

from __future__ import annotations

import random

import pytest

from ai_service import wer
from ai_service.wer import Run


def _dp_distance(a: list[str], b: list[str]) -> int:
    """Textbook Levenshtein by full table: the oracle for the bit-parallel version."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j - 1] + (x != y), previous[j] + 1, current[j - 1] + 1))
        previous = current
    return previous[-1]


# -- normalisation -------------------------------------------------------------------


def test_normalise_folds_case_and_drops_punctuation() -> None:
    assert wer.normalise("Hello, World!  How are   you?") == ["hello", "world", "how", "are", "you"]


def test_normalise_removes_unicode_punctuation_and_symbols() -> None:
    # « » — … ¿ ¡ and the symbol $ are separators; digits stay (3.5 is two numbers).
    text = "«Алло» — да… ¿Qué? ¡Sí! Заказ $42, 3.5"
    assert wer.normalise(text) == ["алло", "да", "qué", "sí", "заказ", "42", "3", "5"]


def test_normalise_joins_apostrophes_inside_words_only() -> None:
    assert wer.normalise("Don't say 'no' д’Артаньян") == ["dont", "say", "no", "дартаньян"]


def test_normalise_reads_yo_as_ye_and_fullwidth_as_plain() -> None:
    assert wer.normalise("Ещё ЁЖ") == ["еще", "еж"]
    assert wer.normalise("ＡＢＣ１２") == ["abc12"]


def test_normalise_of_blank_text_is_no_words() -> None:
    assert wer.normalise("") == []
    assert wer.normalise("  ... !!! \n\t") == []


# -- word error rate, hand-computed -----------------------------------------------------


def test_identical_texts_have_zero_wer() -> None:
    assert wer.word_error_rate("добрый день", "добрый день") == 0.0


def test_case_and_punctuation_only_differences_are_zero() -> None:
    reference, hypothesis = "Добрый день! Чем могу помочь?", "добрый день чем могу помочь"
    assert wer.word_error_rate(reference, hypothesis) == 0.0
    assert wer.word_error_rate("Hello, WORLD.", "hello world") == 0.0


def test_one_substitution_in_four_words() -> None:
    # ref: the cat sat down
    # hyp: the bat sat down
    #          S                -> 1 / 4
    assert wer.word_error_rate("the cat sat down", "the bat sat down") == 0.25


def test_deletion_and_insertion() -> None:
    # ref: a b c d e -
    # hyp: a - c d e f
    #        D       I          -> (1 D + 1 I) / 5 = 0.4
    assert wer.word_error_rate("a b c d e", "a c d e f") == 0.4


def test_cyrillic_substitution_and_insertion() -> None:
    # ref: здравствуйте вас беспокоит банк  альфа -
    # hyp: здравствуйте вас беспокоит банка альфа сегодня
    #                                 S           I        -> 2 / 5 = 0.4
    reference = "Здравствуйте! Вас беспокоит банк «Альфа»."
    hypothesis = "здравствуйте вас беспокоит банка альфа сегодня"
    assert wer.word_error_rate(reference, hypothesis) == 0.4


def test_cyrillic_deletions_only() -> None:
    # ref: да да конечно я вас слушаю
    # hyp: да -  конечно - -   слушаю
    #         D          D D           -> 3 / 6 = 0.5
    assert wer.word_error_rate("Да, да, конечно, я вас слушаю.", "да конечно слушаю") == 0.5


def test_insertions_can_exceed_one() -> None:
    # ref: да -  -   -
    # hyp: да ну что ж
    #         I  I   I              -> 3 / 1 = 3.0
    assert wer.word_error_rate("да", "да ну что ж") == 3.0


def test_completely_different_texts() -> None:
    # ref: one two three
    # hyp: uno dos  -
    #      S   S    D               -> 3 / 3 = 1.0
    assert wer.word_error_rate("one two three", "uno dos") == 1.0


def test_rounding_to_four_decimals() -> None:
    # ref: a b c ; hyp: a b x  -> 1 substitution / 3 = 0.33333 -> 0.3333
    assert wer.word_error_rate("a b c", "a b x") == 0.3333


def test_both_empty_is_zero() -> None:
    assert wer.word_error_rate("", "") == 0.0
    assert wer.word_error_rate("...", " ! ") == 0.0


def test_empty_reference_with_words_is_one() -> None:
    assert wer.word_error_rate("", "something was said") == 1.0


def test_empty_hypothesis_deletes_every_word() -> None:
    # ref: раз два три ; hyp: (nothing) -> 3 D / 3 = 1.0
    assert wer.word_error_rate("раз два три", "") == 1.0


def test_texts_over_the_cap_are_not_compared() -> None:
    long_text = " ".join(["слово"] * (wer.MAX_WORDS + 1))
    assert wer.word_error_rate(long_text, "слово") is None
    assert wer.word_error_rate("слово", long_text) is None


def test_distance_matches_the_textbook_table_on_random_inputs() -> None:
    rng = random.Random(15)
    vocabulary = ["да", "нет", "банк", "карта", "счёт", "a", "b"]
    for _ in range(300):
        a = [rng.choice(vocabulary) for _ in range(rng.randint(0, 70))]
        b = [rng.choice(vocabulary) for _ in range(rng.randint(0, 70))]
        assert wer.distance(a, b) == _dp_distance(a, b), (a, b)


def test_distance_of_long_texts_crossing_integer_word_sizes() -> None:
    # 130 words: the bit vectors span several machine words.
    a = [f"w{i}" for i in range(130)]
    b = [*a[:40], "x", *a[41:100], *a[101:], "y", "z"]
    # one substitution (w40 -> x), one deletion (w100), two insertions (y, z)
    assert wer.distance(a, b) == 4


# -- alignment ---------------------------------------------------------------------


def test_alignment_runs_hand_computed() -> None:
    # ref: добрый день  я   оператор анна
    # hyp: добрый вечер ваш оператор анна
    #      =      S     S   =        =         -> 2 edits
    ref = wer.normalise("Добрый день, я оператор Анна.")
    hyp = wer.normalise("Добрый вечер, ваш оператор Анна.")
    runs = wer.align(ref, hyp)
    assert runs == [
        Run("equal", ("добрый",), ("добрый",)),
        Run("substitute", ("день", "я"), ("вечер", "ваш")),
        Run("equal", ("оператор", "анна"), ("оператор", "анна")),
    ]
    assert wer.edits(runs) == wer.distance(ref, hyp) == 2


def test_alignment_with_deletion_and_insertion() -> None:
    # ref: a b c d e -
    # hyp: a - c d e f
    runs = wer.align(list("abcde"), list("acdef"))
    assert runs == [
        Run("equal", ("a",), ("a",)),
        Run("delete", ("b",), ()),
        Run("equal", ("c", "d", "e"), ("c", "d", "e")),
        Run("insert", (), ("f",)),
    ]


def test_alignment_of_empty_sides() -> None:
    assert wer.align([], []) == []
    assert wer.align(["да"], []) == [Run("delete", ("да",), ())]
    assert wer.align([], ["да"]) == [Run("insert", (), ("да",))]


def test_alignment_is_minimal_on_random_inputs() -> None:
    rng = random.Random(7)
    vocabulary = ["да", "нет", "банк", "карта", "a"]
    for _ in range(200):
        a = [rng.choice(vocabulary) for _ in range(rng.randint(0, 30))]
        b = [rng.choice(vocabulary) for _ in range(rng.randint(0, 30))]
        runs = wer.align(a, b)
        assert runs is not None
        assert [w for r in runs for w in r.ref] == a
        assert [w for r in runs for w in r.hyp] == b
        assert wer.edits(runs) == wer.distance(a, b)


def test_long_alignment_is_minimal_across_integer_word_sizes() -> None:
    # 300 x 300 words: the bit vectors span many machine words.
    a = [f"w{i}" for i in range(300)]
    b = [*a[:10], "x", *a[11:150], *a[151:290], "y", *a[290:], "z"]
    runs = wer.align(a, b)
    assert runs is not None
    assert [w for r in runs for w in r.ref] == a
    assert [w for r in runs for w in r.hyp] == b
    # w10 -> x, w150 deleted, y inserted, z inserted
    assert wer.edits(runs) == wer.distance(a, b) == 4


def test_alignment_of_texts_over_the_cap_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wer, "ALIGN_MAX_WORDS", 5)
    assert wer.align(list("abcdef"), list("abc")) is None
    assert wer.align(list("abc"), list("abcdef")) is None
    assert wer.align(list("abcde"), list("abcde")) is not None
