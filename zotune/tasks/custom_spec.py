"""The task spec of a user's own data: how a row becomes a prompt and an answer, and where splits come from.

The spec is small on purpose (a template plus the name of the answer field) and is checked as a
whole before any data or model is read, so a typo costs milliseconds, not a model load. Every
error names the spec (file or run config), the key, and what to write instead.
"""

from __future__ import annotations

import difflib
import re
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KINDS = ("classification", "multiple_choice", "generation")
SPLITS = ("train", "dev", "test")
METRICS = {"classification": ("accuracy",), "multiple_choice": ("accuracy",), "generation": ("em", "f1")}
DEFAULT_METRIC = {"classification": "accuracy", "multiple_choice": "accuracy", "generation": "f1"}
DEFAULT_FRACTIONS = {"dev": 0.1, "test": 0.1}

KEYS = {
    "name": "the task's name in run folders and results (default: the data file's name without suffix)",
    "template": "the prompt, with {field} placeholders filled from each row ({{ and }} for literal braces)",
    "separator": "text between the prompt and each verbalizer, choice or completion (default: one space)",
    "label": "classification: the field holding each row's label",
    "verbalizers": "classification: label value -> word, or a list of words for labels 0..n-1",
    "choices": "multiple choice: a field holding a list of choices, or a list of fields, one per choice",
    "answer": "multiple choice: the field holding the right choice, as its 0-based index or its text",
    "normalize": "multiple choice: true scores each choice by its mean token log-likelihood, not the sum",
    "completion": "generation: the field holding the gold completion (a string or a list of accepted strings)",
    "stop": "generation: string(s) that end decoding (default: a newline)",
    "max_new_tokens": "generation: decoding budget in tokens (default: the generation kind's, 50)",
    "metric": "the headline metric: accuracy (classification, multiple choice), f1 (default) or em (generation)",
    "files": "per-split files {train: ..., dev: ..., test: ...}, relative to the data file's folder",
    "split": "fractions drawn from the train rows for splits without a file (default: {dev: 0.1, test: 0.1, seed: 0})",
}
"""Every spec key with its meaning: the unknown-key message and the README list come from here."""

KIND_KEYS = {"classification": "label", "multiple_choice": "choices", "generation": "completion"}
COMPANION = {"label": ("verbalizers",), "choices": ("answer",), "completion": ()}
ONLY_WITH = {"verbalizers": "label", "answer": "choices", "normalize": "choices", "stop": "completion",
             "max_new_tokens": "completion"}

EXAMPLE_SPEC = ("template: \"Review: {text}\\nSentiment:\"\n"
                "label: label\n"
                "verbalizers: {0: terrible, 1: great}")


class _SpecLoader(yaml.SafeLoader):
    """YAML with only true/false as booleans (YAML 1.2), so labels such as yes/no/on/off stay text."""


_SpecLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_SpecLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                  list("tTfF"))


@dataclass(frozen=True)
class SplitFractions:
    """Fractions of the train rows drawn (with ``seed``) for dev and test when they have no file."""

    dev: float = DEFAULT_FRACTIONS["dev"]
    test: float = DEFAULT_FRACTIONS["test"]
    seed: int = 0


@dataclass(frozen=True)
class TaskSpec:
    """A validated spec. ``where`` names its origin for error messages."""

    kind: str
    template: tuple[tuple[str, str | None], ...]  # (literal text, field name or None) pieces
    where: str
    name: str | None = None
    separator: str = " "
    label: str | None = None
    verbalizers: tuple[tuple[str, str], ...] = ()  # (label key, word), in the spec's order
    choices: str | tuple[str, ...] | None = None
    answer: str | None = None
    normalize: bool = False
    completion: str | None = None
    stop: tuple[str, ...] | None = None  # None: the generation kind's defaults
    max_new_tokens: int | None = None
    metric: str = "accuracy"
    files: dict[str, str] = field(default_factory=dict)
    split: SplitFractions = SplitFractions()

    @property
    def template_fields(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(f for _, f in self.template if f is not None))

    @property
    def answer_fields(self) -> tuple[str, ...]:
        """Fields that hold (part of) the answer; a template must not show them."""
        if self.kind == "classification":
            return (self.label,)
        if self.kind == "generation":
            return (self.completion,)
        return (self.answer,) + ((self.choices,) if isinstance(self.choices, str) else ())


def label_key(value: Any) -> str | None:
    """One comparable spelling of a label: JSON 1, 1.0 and CSV "1" all become "1"; None if not a scalar."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        return value.strip()
    return None


def load_spec(spec: str | Path | dict | None) -> TaskSpec:
    """Read a spec from a YAML file path or an inline mapping, and check it completely."""
    if spec is None:
        raise ValueError("your own data needs a task spec: give --task-spec spec.yaml (or task_spec: in the run "
                         f"config), e.g. a spec.yaml holding:\n{EXAMPLE_SPEC}")
    if isinstance(spec, (str, Path)):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"task spec file not found: {path}; --task-spec takes a YAML file such as:\n"
                                    f"{EXAMPLE_SPEC}")
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            at = f", line {mark.line + 1}" if mark is not None else ""
            raise ValueError(f"task spec {path}{at}: not valid YAML ({getattr(e, 'problem', None) or e}); "
                             "fix the file (quote a template that holds ': ' or starts with '{')") from None
        where = str(path)
    else:
        data, where = spec, "the task spec (task_spec: in the run config)"
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping of keys to values, got {type(data).__name__}; "
                         f"for example:\n{EXAMPLE_SPEC}")
    return _parse(dict(data), where)


def _parse(data: dict, where: str) -> TaskSpec:
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), list(KEYS), n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ValueError(f"{where}: unknown key(s) {', '.join(hints)}; valid keys: {', '.join(KEYS)}")
    kinds = [k for k in KIND_KEYS.values() if k in data]
    if len(kinds) != 1:
        got = "none of them" if not kinds else f"{' and '.join(kinds)}"
        raise ValueError(f"{where}: give exactly one of label (classification), choices (multiple choice) or "
                         f"completion (generation); got {got}")
    kind = next(k for k, v in KIND_KEYS.items() if v == kinds[0])
    for companion in COMPANION[kinds[0]]:
        if companion not in data:
            raise ValueError(f"{where}: {kinds[0]} needs {companion}: ({KEYS[companion]})")
    for key, needs in ONLY_WITH.items():
        if key in data and needs not in data:
            raise ValueError(f"{where}: {key} only applies with {needs}: ({KEYS[key]}); remove it")
    if "template" not in data:
        raise ValueError(f"{where}: missing template: ({KEYS['template']}), e.g. template: \"Review: {{text}}\\n"
                         "Sentiment:\"")

    out: dict[str, Any] = {"kind": kind, "where": where}
    out["template"] = _template(data["template"], where)
    if "name" in data:
        out["name"] = _text(data, "name", where, nonempty=True)
    if "separator" in data:
        out["separator"] = _text(data, "separator", where)
    for key in ("label", "answer", "completion"):
        if key in data:
            out[key] = _text(data, key, where, nonempty=True)
    if "verbalizers" in data:
        out["verbalizers"] = _verbalizers(data["verbalizers"], where)
    if "choices" in data:
        out["choices"] = _choices(data["choices"], where)
    if "normalize" in data:
        if not isinstance(data["normalize"], bool):
            raise ValueError(f"{where}: normalize must be true or false, got {data['normalize']!r}")
        out["normalize"] = data["normalize"]
    if "stop" in data:
        stop = data["stop"]
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
            raise ValueError(f"{where}: stop must be a non-empty string or a list of them, got {data['stop']!r}")
        out["stop"] = tuple(stop)
    if "max_new_tokens" in data:
        n = data["max_new_tokens"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{where}: max_new_tokens must be a positive integer, got {n!r}")
        out["max_new_tokens"] = n
    out["metric"] = data.get("metric", DEFAULT_METRIC[kind])
    if out["metric"] not in METRICS[kind]:
        raise ValueError(f"{where}: metric {out['metric']!r} does not apply to {kind.replace('_', ' ')}; "
                         f"choose one of {', '.join(METRICS[kind])}")
    if "files" in data:
        out["files"] = _files(data["files"], where)
    out["split"] = _fractions(data.get("split"), out.get("files", {}), where)
    spec = TaskSpec(**out)
    leaked = [f for f in spec.answer_fields if f in spec.template_fields]
    if leaked:
        raise ValueError(f"{where}: the template shows {{{leaked[0]}}}, the field holding the answer, so every "
                         "prompt would give its answer away; remove it from the template")
    return spec


def _text(data: dict, key: str, where: str, nonempty: bool = False) -> str:
    v = data[key]
    if not isinstance(v, str) or (nonempty and not v.strip()):
        raise ValueError(f"{where}: {key} must be {'a non-empty ' if nonempty else 'a '}string "
                         f"({KEYS[key]}), got {v!r}")
    return v


def _template(tpl: Any, where: str) -> tuple[tuple[str, str | None], ...]:
    if not isinstance(tpl, str) or not tpl.strip():
        raise ValueError(f"{where}: template must be a non-empty string with {{field}} placeholders, got {tpl!r}")
    try:
        parsed = list(string.Formatter().parse(tpl))
    except ValueError as e:
        raise ValueError(f"{where}: template {tpl!r} is malformed ({e}); write {{field}} for a field, "
                         "{{ and }} for literal braces") from None
    pieces = []
    for literal, name, spec, conversion in parsed:
        if name is not None and (not name.strip() or spec or conversion):
            raise ValueError(f"{where}: template placeholder {{{name}{'!' + conversion if conversion else ''}"
                             f"{':' + spec if spec else ''}}} is not a plain field name; write {{field}}")
        pieces.append((literal, name))
    if not any(name for _, name in pieces):
        raise ValueError(f"{where}: template {tpl!r} names no field, so every prompt would be the same; "
                         "add placeholders such as {text}")
    return tuple(pieces)


def _verbalizers(v: Any, where: str) -> tuple[tuple[str, str], ...]:
    if isinstance(v, list):
        pairs = [(str(i), w) for i, w in enumerate(v)]
    elif isinstance(v, dict):
        pairs = [(label_key(k), w) for k, w in v.items()]
    else:
        pairs = []
    if len(pairs) < 2 or not all(isinstance(w, str) and w.strip() and k is not None for k, w in pairs):
        raise ValueError(f"{where}: verbalizers must map each label to a non-empty word, at least two of them, "
                         f"e.g. {{0: terrible, 1: great}} or [terrible, great]; got {v!r}")
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"{where}: verbalizers name a label twice ({keys}); give each label once")
    words = [w for _, w in pairs]
    if len(set(words)) != len(words):
        raise ValueError(f"{where}: two labels share a verbalizer ({words}); the model could not tell them apart")
    return tuple(pairs)


def _choices(v: Any, where: str) -> str | tuple[str, ...]:
    if isinstance(v, str) and v.strip():
        return v
    if isinstance(v, list) and len(v) >= 2 and all(isinstance(f, str) and f.strip() for f in v):
        return tuple(v)
    raise ValueError(f"{where}: choices must be a field holding a list of choices (choices: options) or a list "
                     f"of at least two fields, one per choice (choices: [choice1, choice2]); got {v!r}")


def _files(v: Any, where: str) -> dict[str, str]:
    if not isinstance(v, dict) or not v:
        raise ValueError(f"{where}: files must map splits to files, e.g. files: {{train: train.jsonl, "
                         f"dev: dev.jsonl, test: test.jsonl}}; got {v!r}")
    bad = [k for k in v if k not in SPLITS]
    if bad:
        raise ValueError(f"{where}: files names unknown split(s) {', '.join(map(repr, bad))}; "
                         f"splits are {', '.join(SPLITS)}")
    for k, f in v.items():
        if not isinstance(f, str) or not f.strip():
            raise ValueError(f"{where}: files.{k} must be a file path, got {f!r}")
    return dict(v)


def _fractions(v: Any, files: dict[str, str], where: str) -> SplitFractions:
    if v is None:
        return SplitFractions()
    if not isinstance(v, dict):
        raise ValueError(f"{where}: split must be a mapping like {{dev: 0.1, test: 0.1, seed: 0}}, got {v!r}")
    bad = [k for k in v if k not in ("dev", "test", "seed")]
    if bad:
        raise ValueError(f"{where}: split takes dev, test and seed; unknown {', '.join(map(repr, bad))}")
    for k in ("dev", "test"):
        if k in v and k in files:
            raise ValueError(f"{where}: {k} has a file (files.{k}) and a fraction (split.{k}); remove one")
    fr = {k: v.get(k, DEFAULT_FRACTIONS[k]) for k in ("dev", "test")}
    for k, x in fr.items():
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not 0 < x < 1:
            raise ValueError(f"{where}: split.{k} must be a fraction between 0 and 1 (exclusive), got {x!r}")
    if sum(x for k, x in fr.items() if k not in files) >= 1:
        raise ValueError(f"{where}: split fractions {fr} leave no training rows; make them sum to less than 1")
    seed = v.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{where}: split.seed must be an integer, got {seed!r}")
    return SplitFractions(dev=float(fr["dev"]), test=float(fr["test"]), seed=seed)
