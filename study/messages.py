"""Pydantic's validation errors in a study file's terms: which key, what it must be, what was meant."""

from __future__ import annotations

import difflib
import re
import types
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Loc = tuple[str | int, ...]

# union members and discriminator tags that pydantic puts in an error's location
_TAG = re.compile(
    r"(bool|int|str|float|log_float|log_int|categorical|uniform|proportional|rank|constrained-\w+"
    r"|(literal|tuple|list|dict|function-\w+)\[.*\])"
)
# a value error that names its own key first: "exploration.gsde: sac needs ..."
_KEYED = re.compile(r"^([A-Za-z_][\w./:-]*): (.+)$", re.DOTALL)
_QUOTED = re.compile(r"'([^']*)'")


def _items(n: int) -> str:
    return f"{n} item" if n == 1 else f"{n} items"


# error type → what the value must be, from the error's context
PHRASES: dict[str, Callable[[dict[str, Any]], str]] = {
    "missing": lambda ctx: "required, but not given",
    "extra_forbidden": lambda ctx: "unknown key",
    "invalid_key": lambda ctx: "keys must be strings",
    "bool_type": lambda ctx: "must be true or false",
    "bool_parsing": lambda ctx: "must be true or false",
    "int_type": lambda ctx: "must be an integer",
    "int_parsing": lambda ctx: "must be an integer",
    "int_from_float": lambda ctx: "must be a whole number",
    "float_type": lambda ctx: "must be a number",
    "float_parsing": lambda ctx: "must be a number",
    "finite_number": lambda ctx: "must be a finite number",
    "string_type": lambda ctx: "must be a string",
    "list_type": lambda ctx: "must be a list",
    "tuple_type": lambda ctx: "must be a list",
    "dict_type": lambda ctx: "must be a mapping",
    "model_type": lambda ctx: "must be a mapping",
    "model_attributes_type": lambda ctx: "must be a mapping",
    "literal_error": lambda ctx: f"must be {ctx['expected']}",
    "union_tag_invalid": lambda ctx: f"must be one of {ctx['expected_tags']}",
    "union_tag_not_found": lambda ctx: "required, but not given",
    "greater_than": lambda ctx: f"must be greater than {ctx['gt']}",
    "greater_than_equal": lambda ctx: f"must be at least {ctx['ge']}",
    "less_than": lambda ctx: f"must be less than {ctx['lt']}",
    "less_than_equal": lambda ctx: f"must be at most {ctx['le']}",
    "too_short": lambda ctx: f"needs at least {_items(ctx['min_length'])}",
    "too_long": lambda ctx: f"takes at most {_items(ctx['max_length'])}",
    "string_pattern_mismatch": lambda ctx: f"must be a string matching {ctx['pattern']}",
}
# error types whose input is not worth repeating
_NO_GOT = {"missing", "extra_forbidden", "union_tag_not_found"}


@dataclass(frozen=True)
class Problem:
    """One offending key: `key: text`, and its location for finding where it was written."""

    loc: Loc
    text: str
    kind: str  # pydantic's error type ("extra_forbidden", ...); of the first alternative for a union

    @property
    def key(self) -> str:
        return dotted(self.loc)


def dotted(loc: Iterable[str | int]) -> str:
    """`a.b[1].c` for ("a", "b", 1, "c")."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def show(value: Any) -> str:
    """A value as YAML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "null" if value is None else repr(value)


def did_you_mean(word: Any, candidates: Iterable[Any]) -> str:
    """ "; did you mean 'x'?" for the candidates closest to `word`, or ""."""
    close = difflib.get_close_matches(str(word), [str(c) for c in candidates], n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(map(repr, close))}?" if close else ""


def _members(annotation: Any) -> list[Any]:
    """The types an annotation accepts, Annotated and unions unwrapped."""
    if get_origin(annotation) is Annotated:
        return _members(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [t for arg in get_args(annotation) for t in _members(arg)]
    return [annotation]


def _models(types_: Iterable[Any]) -> list[type[BaseModel]]:
    return [t for t in types_ if isinstance(t, type) and issubclass(t, BaseModel)]


def _tag_of(model: type[BaseModel], part: Any) -> bool:
    """Whether `part` is the discriminator value that selects `model` in a union."""
    return part not in model.model_fields and any(
        get_origin(f.annotation) is Literal and get_args(f.annotation) == (part,) for f in model.model_fields.values()
    )


def known_keys(root: type[BaseModel], loc: Loc) -> list[str]:
    """The keys the settings at `loc` (pydantic's location, union tags included) accept; empty where
    any key goes."""
    current: list[Any] = [root]
    for part in loc:
        members = [m for c in current for m in _members(c)]
        if tagged := [m for m in _models(members) if _tag_of(m, part)]:
            current = tagged
            continue
        if isinstance(part, str) and _TAG.fullmatch(part) and not any(part in m.model_fields for m in _models(members)):
            continue  # a member of a union, named by its type
        following = []
        for tp in members:
            if isinstance(tp, type) and issubclass(tp, BaseModel) and part in tp.model_fields:
                following.append(tp.model_fields[part].annotation)
            elif get_origin(tp) is dict:
                following.append(get_args(tp)[1])
            elif get_origin(tp) is list and isinstance(part, int):
                following.append(get_args(tp)[0])
        current = following
    models = _models(m for c in current for m in _members(c))
    return list(dict.fromkeys(name for model in models for name in model.model_fields))


# error type → what the user may have meant instead of the input
_CANDIDATES: dict[str, Callable[[ErrorDetails, type[BaseModel]], list[str]]] = {
    "extra_forbidden": lambda error, root: known_keys(root, error["loc"][:-1]),
    "literal_error": lambda error, root: _QUOTED.findall(error["ctx"]["expected"]),
    "union_tag_invalid": lambda error, root: _QUOTED.findall(error["ctx"]["expected_tags"]),
}


def _worth_showing(kind: str, value: Any, text: str) -> bool:
    """Whether to add the input to the message: not for what a value error names already."""
    if kind in _NO_GOT or isinstance(value, dict):
        return False
    return kind != "value_error" or not isinstance(value, list) and "(got " not in text and show(value) not in text


def _join_alternatives(texts: list[str]) -> str:
    """ "must be an integer or 'episode'" from the messages of a union's members."""
    texts = list(dict.fromkeys(texts))
    if len(texts) > 1 and all(t.startswith("must be ") for t in texts):
        rest = [t.removeprefix("must be ") for t in texts]
        return "must be " + ", ".join(rest[:-1]) + " or " + rest[-1]
    return "; or ".join(texts)


def _furthest(errors: list[ErrorDetails]) -> list[tuple[ErrorDetails, Loc]]:
    """The errors with their key paths (union tags left out); of a union's alternatives, only
    those that got furthest into the input."""
    located = []
    for error in errors:
        raw = error["loc"]
        tags = [i for i, part in enumerate(raw) if isinstance(part, str) and _TAG.fullmatch(part)]
        if error["type"] == "extra_forbidden":  # the unknown key itself, even one named like a tag
            tags = [i for i in tags if i < len(raw) - 1]
        site = tuple(raw[: tags[0]]) if tags else None  # where the union is
        loc = tuple(part for i, part in enumerate(raw) if i not in tags)
        located.append((error, loc, site, len(raw) - (tags[0] if tags else 0)))
    reach: dict[Loc, int] = {}
    for _, _, site, depth in located:
        if site is not None:
            reach[site] = max(reach.get(site, 0), depth)
    return [(error, loc) for error, loc, site, depth in located if site is None or depth == reach[site]]


def problems(err: ValidationError, root: type[BaseModel], elsewhere: dict[str, str] | None = None) -> list[Problem]:
    """One problem per offending key, the alternatives of a union merged into one.

    :param root: the model that was validated, to list the keys it accepts
    :param elsewhere: top-level keys this model refuses but a study takes elsewhere → why refused here
    """
    elsewhere = elsewhere or {}
    texts: dict[Loc, list[str]] = {}
    kinds: dict[Loc, str] = {}
    got: dict[Loc, str] = {}
    hints: dict[Loc, str] = {}
    for error, loc in _furthest(err.errors()):
        ctx, kind = error.get("ctx") or {}, error["type"]
        if kind.startswith("union_tag"):  # a discriminated union names its tag's key
            loc = (*loc, ctx["discriminator"].strip("'"))
        if kind == "invalid_key" or loc[-1:] == ("[key]",):  # a key that is not a string, e.g. 5: {...}
            loc, kind = loc[: -1 if kind == "invalid_key" else -2], "invalid_key"
        text = PHRASES[kind](ctx) if kind in PHRASES else error["msg"].removeprefix("Value error, ")
        if kind == "value_error" and (keyed := _KEYED.match(text)):
            loc, text = (*loc, *keyed[1].split(".")), keyed[2]
        value = ctx.get("tag", error["input"])
        if kind == "invalid_key":
            text += f" (got {show(value)}; quote it: '{value}')"
        elif _worth_showing(kind, value, text):
            got[loc] = f" (got {show(value)})"
        if kind == "extra_forbidden" and len(loc) == 1 and loc[0] in elsewhere:
            text = elsewhere[str(loc[0])]
        elif kind in _CANDIDATES and (
            hint := did_you_mean(loc[-1] if kind == "extra_forbidden" else value, _CANDIDATES[kind](error, root))
        ):
            hints[loc] = hint
        elif kind == "extra_forbidden" and (known := known_keys(root, error["loc"][:-1])):
            text += f" (known keys: {', '.join(known)})"
        texts.setdefault(loc, []).append(text)
        kinds.setdefault(loc, kind)
    return [
        Problem(loc, _join_alternatives(t) + got.get(loc, "") + hints.get(loc, ""), kinds[loc])
        for loc, t in texts.items()
    ]
