"""A model's config from the command line: `-o FIELD=VALUE`, checked against its dataclass.

The dataclass is the one statement of a model's hyperparameters: its defaults are the course's,
and the comment beside (or just above) each field is its description in `lvm show MODEL`. Values
are parsed by the field's annotation: int, float, bool, str, a `Literal[...]` of choices, a tuple
("64,64"), or any of these `| None` ("none").

What a value may be beyond its type is declared in the annotation too, `Annotated[int, Range(1,
4096)]`: the range of a number (of each item of a tuple), and whether it must be odd. `check`
applies every field's range, and the config's `RULES` (relations between fields), before
anything is built or written; `lvm show` prints them.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Literal

from lvm.engine.errors import UserError, setting


@dataclass(frozen=True)
class Range:
    """The values a number field may take (each item, for a tuple): lo <= value <= hi, with an
    end left out where `lo_open`/`hi_open`, and only odd ones where `odd` (a centred kernel)."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    odd: bool = False

    def __str__(self) -> str:
        def num(x: float) -> str:
            return str(int(x)) if float(x).is_integer() else f"{x:g}"

        lo = "" if self.lo is None else f"{'(' if self.lo_open else '['}{num(self.lo)}"
        hi = "" if self.hi is None else f"{num(self.hi)}{')' if self.hi_open else ']'}"
        ends = f"{lo}, {hi}" if lo and hi else (f">{'' if self.lo_open else '='} {num(self.lo)}" if lo
                                                 else f"<{'' if self.hi_open else '='} {num(self.hi)}")
        return ("odd in " if self.odd else "") + ends

    def problem(self, value: Any) -> str | None:
        """Why `value` is out of range, or None."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None  # not a number: the type check's business
        if isinstance(value, float) and not math.isfinite(value):
            return "must be a finite number"
        if self.lo is not None and (value <= self.lo if self.lo_open else value < self.lo):
            return f"must be {'above' if self.lo_open else 'at least'} {self.lo:g}"
        if self.hi is not None and (value >= self.hi if self.hi_open else value > self.hi):
            return f"must be {'below' if self.hi_open else 'at most'} {self.hi:g}"
        if self.odd and value % 2 != 1:
            return "must be odd"
        return None


@dataclass(frozen=True)
class Rule:
    """A relation between fields that no single range says: `holds(config)`, else `message`."""

    holds: Callable[[Any], bool]
    message: str


@dataclass(frozen=True)
class Field:
    name: str
    type: Any  # the resolved annotation
    default: Any
    help: str
    range: Range | None = None

    def type_name(self) -> str:
        return _type_name(self.type) + (f" {self.range}" if self.range else "")


def _type_name(t: Any) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin is tuple:
        return "tuple of " + _type_name(args[0]) if args else "tuple"
    return "none" if t is type(None) else getattr(t, "__name__", str(t))


def _comments(cls: type) -> dict[str, str]:
    """Each field's comment: the `# ...` on its line, else the comment lines just above it.
    Base classes first, so that a subclass's own comment wins."""
    out: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()[1:]
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            text = line.strip()
            if text.startswith("#"):
                above.append(text.lstrip("#").strip())
                continue
            m = re.match(r"^(\w+)\s*:[^#]*(?:#\s*(.*))?$", text)
            if m and not text.startswith(("def ", "return ", "class ")):
                note = m.group(2) or " ".join(above)
                out[m.group(1)] = note.split(". ")[0].rstrip(".") if note else ""
            above = []
    return out


def fields(cls: type) -> list[Field]:
    """The config's fields with their resolved types, defaults and descriptions."""
    hints = typing.get_type_hints(cls)
    extras = typing.get_type_hints(cls, include_extras=True)
    notes = _comments(cls)
    out = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        ranges = [r for r in getattr(extras[f.name], "__metadata__", ()) if isinstance(r, Range)]
        out.append(Field(f.name, hints[f.name], default, notes.get(f.name, ""), ranges[0] if ranges else None))
    return out


def check(config: Any, fixed: tuple[str, ...] = ()) -> None:
    """Refuse, in one line, a config with a value out of its field's range or breaking one of its
    `RULES`; `fixed` fields (set from the data) are named as such."""
    for f in fields(type(config)):
        value = getattr(config, f.name)
        if not fits(f.type, value):
            where = f"{f.name} (set from the data)" if f.name in fixed else setting("config." + f.name)
            raise UserError(f"{where}={value!r}: not of the field's type ({f.name} is {f.type_name()})")
        items = value if isinstance(value, tuple) else (value,)
        if isinstance(value, tuple) and not value and typing.get_args(f.type)[-1:] == (Ellipsis,):
            raise UserError(f"{setting('config.' + f.name)}=: give at least one value ({f.name} is {f.type_name()})")
        problem = next((p for p in map(f.range.problem, items) if p), None) if f.range else None
        if problem:
            shown = ",".join(map(str, items)) if isinstance(value, tuple) else value
            where = f"{f.name} (set from the data)" if f.name in fixed else f"{setting('config.' + f.name)}={shown}"
            each = "each value " if isinstance(value, tuple) else ""
            raise UserError(f"{where}: {each}{problem} ({f.name} is {f.type_name()})")
    broken = broken_rules(config)
    if broken:
        raise UserError(f"{type(config).__name__}: {broken[0]}")


def broken_rules(config: Any) -> list[str]:
    """The messages of the config's `RULES` that it breaks (none: []); a model that is built
    without `check` (from Python, as the course's notebooks do) raises on them itself."""
    return [rule.message for rule in getattr(type(config), "RULES", ()) if not rule.holds(config)]


def fits(t: Any, value: Any) -> bool:
    """Whether `value` is of the annotation `t` (an int does for a float; a bool is no number)."""
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return any(fits(a, value) for a in args)
    if origin is Literal:
        return value in args
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        items = args[:1] * len(value) if len(args) == 2 and args[1] is Ellipsis else args
        return not args or (len(items) == len(value) and all(map(fits, items, value)))
    if t is type(None):
        return value is None
    if t in (int, float):
        return isinstance(value, (int, float) if t is float else int) and not isinstance(value, bool)
    return isinstance(value, t) if isinstance(t, type) else True


def coerce(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Settings given from Python: a string for a field that holds no strings is read as the
    command line reads it (`{"prior_epochs": "6"}` as `-o prior_epochs=6`); the rest as given,
    left to `check`. An unknown field is left to the dataclass."""
    known = {f.name: f for f in fields(cls)}
    out = dict(values)
    for name, value in values.items():
        f = known.get(name)
        if f is not None and isinstance(value, str) and not fits(f.type, value):
            out[name] = read_setting(f, value)
    return out


def read_setting(field: Field, text: str) -> Any:
    """`text` as a value of `field`, or a one-line UserError naming the setting and its type."""
    try:
        return parse_value(field, text)
    except ValueError as e:
        raise UserError(f"{setting('config.' + field.name)}={text}: {e} ({field.name} is {field.type_name()})") from None


def parse_value(field: Field, text: str) -> Any:
    """`text` as a value of `field`'s type; ValueError with the reason otherwise."""
    return _parse(field.type, text.strip())


def _parse(t: Any, text: str) -> Any:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _parse(a, text)
            except ValueError as e:
                errors.append(str(e))
        raise ValueError("; ".join(errors))
    if origin is Literal:
        if text not in args:
            raise ValueError(f"expected one of {', '.join(map(str, args))}")
        return text
    if origin is tuple:
        parts = [p for p in text.strip("()[] ").split(",") if p.strip()]
        items = args[:1] * len(parts) if len(args) == 2 and args[1] is Ellipsis else args
        if len(items) != len(parts):
            raise ValueError(f"expected {len(items)} comma-separated values")
        return tuple(_parse(a, p.strip()) for a, p in zip(items, parts))
    if t is bool:
        if text.lower() in ("true", "yes", "on", "1"):
            return True
        if text.lower() in ("false", "no", "off", "0"):
            return False
        raise ValueError("expected true or false")
    if t is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected a whole number") from None
    if t is float:
        try:
            value = float(text)
        except ValueError:
            raise ValueError("expected a number") from None
        if not math.isfinite(value):
            raise ValueError("expected a finite number")
        return value
    if t is str:
        return text
    raise ValueError(f"cannot be set from the command line (type {_type_name(t)})")


def parse_overrides(cls: type, pairs: list[str] | tuple[str, ...], fixed: tuple[str, ...] = ()) -> dict[str, Any]:
    """["num_codes=256", "beta=0.5"] -> {"num_codes": 256, "beta": 0.5}, checked against
    the dataclass; `fixed` fields (decided by the data) cannot be set. One-line UserError."""
    known = {f.name: f for f in fields(cls)}
    settable = [n for n in known if n not in fixed]
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise UserError(f"{{config}} takes FIELD=VALUE, got '{pair}'; fields: {', '.join(settable)}")
        if name not in known:
            raise UserError(f"no field '{name}' in {cls.__name__}; fields: {', '.join(settable)}")
        if name in fixed:
            raise UserError(f"field '{name}' is set from the dataset and cannot be changed")
        out[name] = read_setting(known[name], text)
    return out


def to_dict(config: Any) -> dict[str, Any]:
    """A config as JSON-ready values (tuples become lists)."""
    return json_ready(dataclasses.asdict(config))


def json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def from_dict(cls: type, values: dict[str, Any]) -> Any:
    """The inverse of `to_dict`: lists become tuples where the field is a tuple. Keys that are not
    fields are refused (a checkpoint of another config); missing ones take the config's `LEGACY`
    value if it has one, else its default."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
    # a field added after a checkpoint was written takes the value that rebuilds the model it
    # holds, where the config names one (`LEGACY`), rather than today's default
    values = {**getattr(cls, "LEGACY", {}), **values}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def describe(cls: type, fixed: tuple[str, ...] = ()) -> list[str]:
    """One line per field: name, type, default, description (for `lvm show`)."""
    rows = []
    for f in fields(cls):
        default = "(from the data)" if f.name in fixed else json_ready(f.default)
        rows.append((f.name, f.type_name(), str(default), f.help))
    width = [max(len(r[i]) for r in rows) for i in range(3)]
    return [f"{a:<{width[0]}}  {b:<{width[1]}}  {c:<{width[2]}}  {d}".rstrip() for a, b, c, d in rows]
