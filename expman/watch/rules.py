"""Watchdog rules as plain data, and the one small grammar that spells them.

A rule is a frozen dataclass; ``parse_rule`` reads it from a string and
``parse_config`` from the ``[watch]`` section of a TOML file. The grammar::

    RULE := NAME [ ":" ARG ( "," ARG )* ]
    ARG  := KEY "=" VALUE          an option of the rule (see each class)
          | METRIC                 a bare word is the metric name (or a glob: train/*)

    "nan"   "nan:train/loss"   "spike:train/loss,k=6,window=50"
    "plateau:val/loss,mode=min,delta=0.001,patience=500"   "stall:floor=60"
    "straggler:ratio=0.5"   "loss_of_data"   "disk:free=5%"   "nan,action=stop"

``action=stop`` (any rule) makes the training loop's next ``log_metrics`` raise
(``expman.watch.WatchStop``). ``default`` stands for DEFAULT_RULES. A metric name
holding ``,`` or ``=`` can only be given in TOML (``metric = "a,b"``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import sys
from dataclasses import dataclass
from typing import Any, ClassVar, Iterable, Mapping

from expman.errors import ExpmanTypeError, ExpmanValueError

__all__ = ["Rule", "Nan", "Spike", "Plateau", "Stall", "Straggler", "LossOfData", "Disk",
           "DEFAULT_RULES", "RULES", "parse_rule", "parse_rules", "parse_config", "WatchConfig",
           "SYSTEM_PREFIX"]

ACTIONS = (None, "stop")
SYSTEM_PREFIX = "system/"      # the sampler's series (expman.sysmetrics): spiky by nature


@dataclass(frozen=True)
class Rule:
    """What every rule shares: a name, and an optional action when it fires."""

    name: ClassVar[str] = ""
    action: str | None = None

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ExpmanValueError(f"watch rule {self.name}: action must be 'stop' or absent, "
                                   f"got {self.action!r}")

    @property
    def spec(self) -> str:
        """The rule back as a string (only what differs from the defaults)."""
        args = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            args.append(value if f.name == "metric" else f"{f.name}={_fmt(value)}")
        args.sort(key=lambda a: "=" in a)          # the metric first
        return self.name + (":" + ",".join(args) if args else "")

    def matches(self, metric: str) -> bool:
        pattern = getattr(self, "metric", None)
        if pattern is None:
            return True
        if any(c in pattern for c in "*?["):
            return fnmatch.fnmatchcase(metric, pattern)
        return bool(metric == pattern)


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Nan(Rule):
    """A metric (``metric``: one name or glob; all by default) becomes NaN or ±inf.
    Fires on the first non-finite point of each series and rank, again only after
    a finite point."""

    name: ClassVar[str] = "nan"
    metric: str | None = None


@dataclass(frozen=True)
class Spike(Rule):
    """A point more than ``k`` robust deviations (1.4826 × MAD) from the median of
    the ``window`` finite points before it (before its block: the points of a
    block of window/4 share one reference, which makes it cheap; blocks are
    counted from the series' first point, so batching never changes the result);
    judged once ``min_points`` are there.
    ``direction``: up, down or both. Without a metric it watches every series but
    the sampler's ``system/...``. A series that has been constant (MAD 0) is not
    judged. After a spike the series is quiet for ``window`` points."""

    name: ClassVar[str] = "spike"
    metric: str | None = None
    k: float = 8.0
    window: int = 50
    min_points: int = 20
    direction: str = "both"

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "k", self.k)
        _count(self, "window", self.window, 3)
        _count(self, "min_points", self.min_points, 3)
        if self.direction not in ("up", "down", "both"):
            raise ExpmanValueError(f"watch rule spike: direction must be up, down or both, "
                                   f"got {self.direction!r}")

    def matches(self, metric: str) -> bool:
        if self.metric is None:
            return not metric.startswith(SYSTEM_PREFIX)
        return super().matches(metric)


@dataclass(frozen=True)
class Plateau(Rule):
    """``metric`` has not improved by at least ``delta`` for ``patience`` steps
    (``mode`` min: lower is better; max: higher is better). Fires once per best
    value; a new best re-arms it."""

    name: ClassVar[str] = "plateau"
    metric: str | None = None
    mode: str = "min"
    delta: float = 0.0
    patience: int = 1000

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.metric:
            raise ExpmanValueError("watch rule plateau needs a metric: plateau:val/loss,patience=500")
        if self.mode not in ("min", "max"):
            raise ExpmanValueError(f"watch rule plateau: mode must be min or max, got {self.mode!r}")
        if not self.delta >= 0:
            raise ExpmanValueError(f"watch rule plateau: delta must be >= 0, got {self.delta!r}")
        _count(self, "patience", self.patience, 1)


@dataclass(frozen=True)
class Stall(Rule):
    """A rank logs no new step for max(``k`` × its median step interval, ``floor``
    seconds); judged once the rank has logged ``min_steps`` distinct steps. A new
    step is any change of step in the order logged (a run resumed from a checkpoint
    logs earlier steps again: that is progress too). Silence counts from the last
    new step or the stream's (re)start, whichever is later."""

    name: ClassVar[str] = "stall"
    k: float = 10.0
    floor: float = 60.0
    min_steps: int = 3

    def __post_init__(self) -> None:
        super().__post_init__()
        _positive(self, "k", self.k)
        if not self.floor >= 0:
            raise ExpmanValueError(f"watch rule stall: floor must be >= 0 s, got {self.floor!r}")
        _count(self, "min_steps", self.min_steps, 2)


@dataclass(frozen=True)
class Straggler(Rule):
    """One rank's step rate (new steps per second over its last ``window`` new
    steps, up to now) is below ``ratio`` × the median rate of the other ranks for
    ``sustain`` seconds."""

    name: ClassVar[str] = "straggler"
    ratio: float = 0.5
    window: int = 50
    sustain: float = 60.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.ratio < 1:
            raise ExpmanValueError(f"watch rule straggler: ratio must be in (0, 1), got {self.ratio!r}")
        _count(self, "window", self.window, 2)
        if not self.sustain >= 0:
            raise ExpmanValueError(f"watch rule straggler: sustain must be >= 0 s, got {self.sustain!r}")


@dataclass(frozen=True)
class LossOfData(Rule):
    """The writer recorded dropped rows or events or a failed write (run.json's
    ``data_loss``, a loss record file, or the live writer's counters); said again
    when a count has at least doubled."""

    name: ClassVar[str] = "loss_of_data"


@dataclass(frozen=True)
class Disk(Rule):
    """Free space on the run folder's filesystem is below ``free``: bytes (with
    K, M, G or T, powers of 1024) or a percentage of the filesystem (``5%``)."""

    name: ClassVar[str] = "disk"
    free: str = "1G"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.threshold(1)           # a bad size fails here, naming it

    def threshold(self, total: int) -> float:
        """The limit in bytes on a filesystem of ``total`` bytes."""
        text = str(self.free).strip().upper()
        try:
            if text.endswith("%"):
                pct = float(text[:-1])
                if not 0 <= pct <= 100:
                    raise ValueError
                return total * pct / 100
            scale = 1
            if text and text[-1] in _UNITS:
                scale, text = _UNITS[text[-1]], text[:-1]
            value = float(text) * scale
            if not value >= 0:
                raise ValueError
            return value
        except ValueError:
            raise ExpmanValueError(f"watch rule disk: free must be a size (500M, 2G) or a "
                                   f"percentage (5%), got {self.free!r}") from None


_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}

RULES: dict[str, type[Rule]] = {r.name: r for r in (Nan, Spike, Plateau, Stall, Straggler,
                                                     LossOfData, Disk)}
_ALIASES = {"loss": "loss_of_data", "inf": "nan"}

def _positive(rule: Rule, key: str, value: float) -> None:
    if not value > 0:
        raise ExpmanValueError(f"watch rule {rule.name}: {key} must be > 0, got {value!r}")


def _count(rule: Rule, key: str, value: int, least: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ExpmanValueError(f"watch rule {rule.name}: {key} must be an integer >= {least}, "
                               f"got {value!r}")


DEFAULT_RULES: tuple[Rule, ...] = (Nan(), Spike(), Stall(), Straggler(), LossOfData(), Disk())


def _convert(cls: type[Rule], key: str, raw: Any, where: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        known = ", ".join(sorted(fields))
        raise ExpmanValueError(f"watch rule {where}: {cls.name} has no option {key!r} "
                               f"(it takes {known})")
    kind = type(fields[key].default)
    if fields[key].default is None:
        kind = str
    if isinstance(raw, str) and kind is not str:
        try:
            number = float(raw)
            if kind is int:
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return number
        except ValueError:
            raise ExpmanValueError(f"watch rule {where}: {key} must be a number, "
                                   f"got {raw!r}") from None
    if kind is float and isinstance(raw, int) and not isinstance(raw, bool):
        return float(raw)
    if kind is str and raw is not None and not isinstance(raw, str):
        raise ExpmanTypeError(f"watch rule {where}: {key} must be a string, got {raw!r}")
    if kind in (int, float) and (isinstance(raw, bool) or not isinstance(raw, (int, float))):
        raise ExpmanTypeError(f"watch rule {where}: {key} must be a number, got {raw!r}")
    return raw


def make_rule(name: str, options: Mapping[str, Any], where: str | None = None) -> Rule:
    """A rule from its name and options (strings or TOML values)."""
    if not isinstance(name, str):
        raise ExpmanTypeError(f"watch rule name must be a string, got {name!r}")
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    cls = RULES.get(key)
    where = where or name
    if cls is None:
        raise ExpmanValueError(f"unknown watch rule {name!r} in {where!r}: the rules are "
                               + ", ".join(RULES))
    kwargs = {k: _convert(cls, k, v, where) for k, v in options.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ExpmanValueError(f"watch rule {where!r}: {e}") from None


def parse_rule(text: str) -> Rule:
    """One rule from the grammar above."""
    if not isinstance(text, str):
        raise ExpmanTypeError(f"a watch rule is a string or a Rule, got {type(text).__name__}")
    name, _, rest = text.strip().partition(":")
    options: dict[str, Any] = {}
    if "," in name:                         # "nan,action=stop": options without a colon
        name, _, more = name.partition(",")
        rest = more + ("," + rest if rest else "")
    for arg in (a.strip() for a in rest.split(",")) if rest.strip() else ():
        if not arg:
            raise ExpmanValueError(f"watch rule {text!r}: an empty option (two commas?)")
        key, eq, value = arg.partition("=")
        key, value = key.strip(), value.strip()
        if not eq:
            key, value = "metric", arg
        if key in options:
            raise ExpmanValueError(f"watch rule {text!r}: {key} given twice")
        options[key] = value
    return make_rule(name, options, text)


def parse_rules(rules: Iterable[Rule | str] | Rule | str | None) -> tuple[Rule, ...]:
    """Rules from Rule objects and strings; None (or "default") means DEFAULT_RULES."""
    if rules is None:
        return DEFAULT_RULES
    if isinstance(rules, (str, Rule)):
        rules = [rules]
    out: list[Rule] = []
    for r in rules:
        if isinstance(r, str) and r.strip().lower() == "default":
            out.extend(DEFAULT_RULES)
        elif isinstance(r, Rule):
            out.append(r)
        else:
            out.append(parse_rule(r))
    seen: dict[str, Rule] = {}
    for r in out:
        seen.setdefault(r.spec, r)          # the same rule twice is one rule
    return tuple(seen.values())


@dataclass(frozen=True)
class WatchConfig:
    """The ``[watch]`` section of a config file."""

    rules: tuple[Rule, ...]
    webhook: str | None = None
    interval: float = 0.5


def parse_config(path: str | os.PathLike[str]) -> WatchConfig:
    """The ``[watch]`` section of a TOML file::

        [watch]
        rules = ["nan,action=stop", "spike:train/loss,k=6"]
        webhook = "http://127.0.0.1:9000/hook"
        interval = 0.5

        [[watch.rule]]                 # the same, one table per rule
        rule = "plateau"
        metric = "val/loss"
        patience = 500
    """
    if sys.version_info >= (3, 11):
        import tomllib
    else:                                               # pragma: no cover (3.10)
        try:
            import tomli as tomllib
        except ImportError:
            raise ExpmanValueError(f"reading {os.fspath(path)}: TOML needs Python 3.11+ or "
                                   "the tomli package (pip install tomli)") from None
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ExpmanValueError(f"{os.fspath(path)} is not valid TOML: {e}") from None
    section = doc.get("watch")
    if section is None:
        raise ExpmanValueError(f"{os.fspath(path)} has no [watch] section")
    if not isinstance(section, dict):
        raise ExpmanValueError(f"{os.fspath(path)}: watch must be a table, got {section!r}")
    unknown = set(section) - {"rules", "rule", "webhook", "interval"}
    if unknown:
        raise ExpmanValueError(f"{os.fspath(path)}: [watch] has no key {sorted(unknown)[0]!r} "
                               "(it takes rules, rule, webhook, interval)")
    strings = section.get("rules", [])
    if not isinstance(strings, list) or not all(isinstance(s, str) for s in strings):
        raise ExpmanValueError(f"{os.fspath(path)}: [watch] rules must be a list of strings")
    rules: list[Rule | str] = list(strings)
    tables = section.get("rule", [])
    if not isinstance(tables, list):
        raise ExpmanValueError(f"{os.fspath(path)}: write each rule as [[watch.rule]]")
    for i, t in enumerate(tables):
        if not isinstance(t, dict) or "rule" not in t:
            raise ExpmanValueError(f"{os.fspath(path)}: [[watch.rule]] number {i + 1} needs "
                                   "rule = \"NAME\"")
        opts = {k: v for k, v in t.items() if k != "rule"}
        rules.append(make_rule(t["rule"], opts, f"{os.fspath(path)}: [[watch.rule]] {i + 1}"))
    webhook = section.get("webhook")
    if webhook is not None and not isinstance(webhook, str):
        raise ExpmanValueError(f"{os.fspath(path)}: [watch] webhook must be a URL string")
    interval = section.get("interval", 0.5)
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or not 0.01 <= interval <= 3600:
        raise ExpmanValueError(f"{os.fspath(path)}: [watch] interval must be seconds in "
                               f"[0.01, 3600], got {interval!r}")
    return WatchConfig(parse_rules(rules) if rules else DEFAULT_RULES, webhook, float(interval))
