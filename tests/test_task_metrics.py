"""SQuAD and DROP answer metrics on hand-made cases."""

import pytest

from zotune.tasks.metrics import drop_normalize, drop_scores, squad_f1, squad_normalize, squad_scores


@pytest.mark.parametrize("text, normalized", [
    ("The Cat!", "cat"),
    ("  an   Apple,  a pear and THE plum. ", "apple pear and plum"),
    ("Theatre of the Absurd", "theatre of absurd"),  # "the" only as a word
    ("Denver Broncos", "denver broncos"),
    ("1,000 ft.", "1000 ft"),
])
def test_squad_normalization(text, normalized):
    assert squad_normalize(text) == normalized


def test_squad_exact_match_and_f1():
    assert squad_scores("the Denver Broncos.", ["Denver Broncos"]) == {"em": 1.0, "f1": 1.0}
    # prediction "denver broncos team" vs gold "denver broncos": precision 2/3, recall 1 -> F1 0.8
    assert squad_f1("Denver Broncos team", "Denver Broncos") == pytest.approx(0.8)
    assert squad_f1("Carolina Panthers", "Denver Broncos") == 0.0
    assert squad_f1("the", "a") == 0.0  # nothing left after normalisation
    # repeated words count with multiplicity: "a a b" vs "a b b" -> common 2 of 3 each
    assert squad_f1("x x y", "x y y") == pytest.approx(2 / 3)


def test_squad_takes_the_best_of_several_gold_answers():
    golds = ["Santa Clara, California", "Levi's Stadium", "Levi's Stadium in the San Francisco Bay Area"]
    res = squad_scores("Levi's Stadium", golds)
    assert res == {"em": 1.0, "f1": 1.0}
    res = squad_scores("the stadium in San Francisco", golds)
    assert res["em"] == 0.0
    # best gold is the third, normalised "levis stadium in san francisco bay area" (7 words):
    # common {stadium, in, san, francisco} = 4 of the prediction's 4 -> P 1, R 4/7, F1 8/11
    assert res["f1"] == pytest.approx(8 / 11)
    with pytest.raises(ValueError, match="gold answer"):
        squad_scores("x", [])


def test_drop_numbers_are_normalised():
    assert drop_normalize("2") == drop_normalize("2.0") == "2.0"
    assert drop_normalize("1,000 yards") == "1000.0 yards"  # punctuation goes, then it is a number
    assert drop_normalize("forty-two") == "forty two"  # hyphens split words
    assert drop_scores("2", [["2.0"]]) == {"em": 1.0, "f1": 1.0}
    assert drop_scores("The 7 yards", [["7 yards"]]) == {"em": 1.0, "f1": 1.0}


def test_drop_gives_zero_when_gold_numbers_are_missed():
    assert drop_scores("8 yards", [["7 yards"]]) == {"em": 0.0, "f1": 0.0}  # SQuAD F1 would give 0.5
    assert squad_f1("8 yards", "7 yards") == 0.5
    assert drop_scores("7 long yards", [["7 yards"]])["f1"] == 0.8  # a shared number: ordinary bag F1


def test_drop_matches_span_bags_one_to_one():
    gold = [["John Smith", "Bob"]]
    assert drop_scores(["Bob", "John Smith"], gold) == {"em": 1.0, "f1": 1.0}  # order does not matter
    # best pairing: (John Smith, John) F1 2/3 and (Bob, Bob) 1 -> mean over the 2 gold spans
    assert drop_scores(["John", "Bob"], gold) == {"em": 0.0, "f1": round((2 / 3 + 1) / 2, 2)}
    # one predicted span for two gold spans: the unmatched gold span scores 0
    assert drop_scores("Bob", gold)["f1"] == 0.5
    # an extra predicted span counts against the prediction too
    assert drop_scores(["Bob", "John Smith", "Mary"], gold)["f1"] == round(2 / 3, 2)


def test_drop_takes_the_best_gold_answer():
    assert drop_scores("4 July 1990", [["1990"], ["4 July 1990"]]) == {"em": 1.0, "f1": 1.0}
    assert drop_scores("July", [["4 July 1990"]])["f1"] == 0.0  # gold has numbers, prediction none
