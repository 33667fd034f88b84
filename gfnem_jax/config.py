"""Settings declared once: a frozen dataclass whose fields carry their help, bounds and choices.

A task or experiment declares its settings as one dataclass; the CLI's flags, the validation
messages and ``config.json`` all come from that declaration::

    @dataclasses.dataclass(frozen=True)
    class HyperGridSettings(Settings):
        ndim: int = setting(2, "number of dimensions d", min=1)
        r0: float = setting(1e-3, "base reward R0", gt=0)
        loss: str = setting("tb", "training objective", choices=("tb", "db"))

    cfg = HyperGridSettings(ndim=3)
    cfg.validate()                      # ValueError: "ndim must be >= 1, got 0"  (the setting's name)
    cfg.to_dict(); HyperGridSettings.from_dict(d)

Library errors name the *setting* (``ndim``); only ``gfnem_jax.cli`` speaks of flags: it derives
them from these declarations (``cli.add_settings``) and turns setting names in errors into flag
names (``--ndim``, ``cli.flag_message``). Numbers are checked to be finite unless a field allows inf.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Dict, Optional, Sequence, Tuple, Type, TypeVar

T = TypeVar("T", bound="Settings")

_META = "gfnem"


def setting(default: Any, help: str, *, min: Optional[float] = None, max: Optional[float] = None,
            gt: Optional[float] = None, lt: Optional[float] = None,
            choices: Optional[Sequence[Any]] = None, was: Sequence[str] = (),
            cli: bool = True, allow_inf: bool = False) -> Any:
    """A dataclass field with CLI help and bounds (min/max inclusive, gt/lt strict).

    was: earlier names of the setting: a config.json saved under one still loads (and resumes),
    and the CLI still takes its flag. cli=False keeps the setting out of the CLI. A setting's
    flag is its name (``--no-`` + it when on by default); the CLI's own spellings are its
    business (``cli.FLAGS``).
    """
    m = dict(help=help, min=min, max=max, gt=gt, lt=lt,
             choices=tuple(choices) if choices is not None else None, cli=cli,
             allow_inf=allow_inf, was=tuple(was))
    return dataclasses.field(default=default, metadata={_META: m})


def retune(cls: type, name: str, default: Any, *, help: Optional[str] = None,
           choices: Optional[Sequence[Any]] = None, **bounds) -> Any:
    """Setting ``name`` of settings group ``cls`` with a run kind's own default (and, optionally,
    its own help, narrower choices or bounds); everything else as the group declares it."""
    f = {g.name: g for g in dataclasses.fields(cls)}[name]
    m = dict(meta(f))
    if help is not None:
        m["help"] = help
    if choices is not None:
        m["choices"] = tuple(choices)
    m.update(bounds)
    return dataclasses.field(default=default, metadata={_META: m})


def meta(f: dataclasses.Field) -> Dict[str, Any]:
    """A setting's declaration (help, bounds, choices, earlier names, cli)."""
    return f.metadata.get(_META, {"help": "", "cli": False})


def check_value(name: str, value: Any, meta: Dict[str, Any]) -> None:
    """Raise ValueError naming ``name`` if ``value`` breaks the bounds in ``meta``."""
    ch = meta.get("choices")
    if ch is not None and value not in ch:
        raise ValueError(f"{name} must be one of {', '.join(map(str, ch))}, got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and math.isnan(value):
        raise ValueError(f"{name} must be a number, got nan")
    if isinstance(value, float) and math.isinf(value) and not meta.get("allow_inf"):
        raise ValueError(f"{name} must be finite, got {value}")
    for key, ok, word in (("min", lambda v, b: v >= b, ">="), ("max", lambda v, b: v <= b, "<="),
                          ("gt", lambda v, b: v > b, ">"), ("lt", lambda v, b: v < b, "<")):
        b = meta.get(key)
        if b is not None and not ok(value, b):
            raise ValueError(f"{name} must be {word} {b}, got {value}")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Base of every declared settings dataclass (see the module docstring).

    PRESETS: defaults that follow from another setting's value, declared with the class:
    ``{("posterior_only", True): {"policy_dim": 64, ...}}``. ``make(**given)`` applies the presets
    of the settings in ``given`` (what a user set) to the settings not in ``given``; the plain
    constructor applies none. The CLI builds settings with ``make``, so a flag's preset shows in
    ``--help`` and a flag given explicitly always wins.
    """

    PRESETS: ClassVar[Dict[Tuple[str, Any], Dict[str, Any]]] = {}

    @classmethod
    def presets(cls, given: Dict[str, Any]) -> Dict[str, Any]:
        """The preset defaults implied by the settings ``given`` (later presets win on a tie)."""
        out: Dict[str, Any] = {}
        for (name, value), defaults in cls.PRESETS.items():
            if name in given and given[name] == value:
                out.update(defaults)
        return out

    @classmethod
    def make(cls: Type[T], **given) -> T:
        """``cls(**given)`` with the presets of ``given`` for the settings it does not name."""
        return cls(**{**cls.presets(given), **given})

    @classmethod
    def presets_of(cls, name: str):
        """[(setting, value, default)]: setting ``name`` defaults to ``default`` when ``setting``
        is given as ``value`` (from PRESETS; for help texts)."""
        return [(k, w, d[name]) for (k, w), d in cls.PRESETS.items() if name in d]

    def validate(self) -> None:
        """Check every field's declared bounds, then ``check`` (cross-field rules)."""
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name), meta(f))
        self.check()

    def check(self) -> None:
        """Cross-field rules; override and raise ValueError naming the settings."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_config(self) -> Dict[str, Any]:
        """What config.json holds (every setting, by name; a run kind may nest groups)."""
        return self.to_dict()

    @classmethod
    def from_config(cls: Type[T], d: Dict[str, Any]) -> T:
        """The settings of a saved config.json (``to_config``'s inverse)."""
        return cls.from_dict(d)

    @classmethod
    def defaults(cls) -> Dict[str, Any]:
        """Every setting's declared default, by name."""
        return {f.name: f.default for f in dataclasses.fields(cls)
                if f.default is not dataclasses.MISSING}

    @classmethod
    def upgrade(cls, d: Dict[str, Any]) -> Dict[str, Any]:
        """``d`` with settings saved under an earlier name (``setting(was=...)``) renamed."""
        d = dict(d)
        for f in dataclasses.fields(cls):
            for old in meta(f).get("was", ()):
                if old in d and f.name not in d:
                    d[f.name] = d.pop(old)
        return d

    @classmethod
    def from_dict(cls: Type[T], d: Dict[str, Any]) -> T:
        d = cls.upgrade(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown settings for {cls.__name__}: {', '.join(unknown)}")
        return cls(**d)

    def replace(self: T, **kw) -> T:
        return dataclasses.replace(self, **kw)
