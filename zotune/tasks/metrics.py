"""Answer metrics of the generation tasks: SQuAD's exact match / F1 and DROP's.

SQuAD (Rajpurkar et al. 2016): answers are compared after lower-casing and removing punctuation,
the articles a/an/the and extra whitespace; F1 is over the bag of remaining words; a question with
several gold answers takes the best score over them.

DROP (Dua et al. 2019) additionally normalises numbers ("2.0" and "2" are the same number, and
number tokens keep their decimal point), splits on hyphens too, treats an answer as a *bag of
spans* (each gold or predicted span one bag of words, matched one-to-one so that the summed F1 is
largest) and gives a span pair F1 = 0 when the gold mentions numbers and the prediction shares none
of them. This follows the rules of the official evaluation script; the code is our own.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from typing import Sequence

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)


def squad_normalize(text: str) -> str:
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def squad_em(prediction: str, gold: str) -> float:
    return float(squad_normalize(prediction) == squad_normalize(gold))


def squad_f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def squad_scores(prediction: str, answers: Sequence[str]) -> dict[str, float]:
    """Exact match and F1 against the best-matching gold answer."""
    if not answers:
        raise ValueError("scoring an answer needs at least one gold answer")
    return {"em": max(squad_em(prediction, a) for a in answers),
            "f1": max(squad_f1(prediction, a) for a in answers)}


# --------------------------------------------------------------------------- DROP

def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def drop_normalize(text: str) -> str:
    """Word-wise: lower-case; strip punctuation unless the word is a number; write numbers as floats
    ("2" -> "2.0"); drop articles and empty words. Words are split on spaces and hyphens."""
    words = []
    for word in re.split(r" |-", text):
        word = word.lower()
        if not _is_number(word):
            word = "".join(ch for ch in word if ch not in _PUNCT)
        if _is_number(word):
            word = str(float(word))
        word = " ".join(_ARTICLES.sub(" ", word).split())
        if word.strip():
            words.append(word)
    return " ".join(words).strip()


def _bags(spans: Sequence[str]) -> tuple[list[str], list[set[str]]]:
    normalized = [drop_normalize(s) for s in spans]
    return normalized, [set(s.split()) for s in normalized]


def _bag_f1(pred: set[str], gold: set[str]) -> float:
    common = len(gold & pred)
    precision = common / len(pred) if pred else 1.0
    recall = common / len(gold) if gold else 1.0
    return 0.0 if precision == 0 and recall == 0 else 2 * precision * recall / (precision + recall)


def _numbers_agree(gold: set[str], pred: set[str]) -> bool:
    gold_numbers = {w for w in gold if _is_number(w)}
    return not gold_numbers or bool(gold_numbers & {w for w in pred if _is_number(w)})


def _best_matching_total(scores: list[list[float]]) -> float:
    """Largest sum of scores[i][j] over one-to-one pairings of rows and columns (exact; bags are a
    handful of spans, so a dynamic programme over subsets of the shorter side is instant)."""
    if not scores or not scores[0]:
        return 0.0
    if len(scores) > len(scores[0]):
        scores = [list(col) for col in zip(*scores)]
    n_cols = len(scores[0])
    best = {0: 0.0}  # used-column mask -> best total so far
    for row in scores:
        nxt: dict[int, float] = {}
        for used, total in best.items():
            for j in range(n_cols):
                if not used >> j & 1:
                    key = used | 1 << j
                    nxt[key] = max(nxt.get(key, float("-inf")), total + row[j])
        best = nxt
    return max(best.values())


def drop_scores_one(prediction: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
    """EM and F1 of predicted spans against one gold answer's spans."""
    pred_norm, pred_bags = _bags(prediction)
    gold_norm, gold_bags = _bags(gold)
    em = float(set(pred_norm) == set(gold_norm) and len(pred_norm) == len(gold_norm))
    scores = [[_bag_f1(p, g) if _numbers_agree(g, p) else 0.0 for p in pred_bags] for g in gold_bags]
    f1 = _best_matching_total(scores) / max(len(gold_bags), len(pred_bags))
    return {"em": em, "f1": round(f1, 2)}


def drop_scores(prediction: str | Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Best EM and best F1 over the gold answers (each a tuple of spans)."""
    if not answers:
        raise ValueError("scoring an answer needs at least one gold answer")
    pred = [prediction] if isinstance(prediction, str) else list(prediction)
    results = [drop_scores_one(pred, g) for g in answers]
    return {"em": max(r["em"] for r in results), "f1": max(r["f1"] for r in results)}
