"""Runtime health bookkeeping: per-stage timings, counters, frame age -> diagnostic status.

The bookkeeping is pure Python (used by nodes and by offline replay alike); only
`diagnostic_array_msg` builds a diagnostic_msgs/DiagnosticArray and it imports the message type
lazily, so the core stays importable without ROS.
"""
from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR, STALE = 0, 1, 2, 3  # diagnostic_msgs/DiagnosticStatus levels


@dataclass
class StatusData:
    name: str
    hardware_id: str
    level: int
    message: str
    values: dict = field(default_factory=dict)  # str -> str


class RollingStats:
    """Last `window` values of one quantity; p50/p95/p99/max for reporting."""

    def __init__(self, window: int = 100):
        self._values: deque = deque(maxlen=window)

    def add(self, value: float) -> None:
        self._values.append(float(value))

    def __len__(self) -> int:
        return len(self._values)

    def summary(self) -> dict:
        if not self._values:
            return {}
        v = np.asarray(self._values)
        return {"last": v[-1], "p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
                "p99": float(np.percentile(v, 99)), "max": float(v.max())}


class RuntimeMonitor:
    """Thread-safe counters + stage timings of one node."""

    def __init__(self, name: str, hardware_id: str = "mu0", window: int = 100):
        self.name = name
        self.hardware_id = hardware_id
        self._window = window
        self._lock = threading.Lock()
        self.counters: dict[str, int] = {}
        self.stages: dict[str, RollingStats] = {}
        self.last_warning = ""

    def count(self, key: str, n: int = 1) -> int:
        with self._lock:
            self.counters[key] = self.counters.get(key, 0) + n
            return self.counters[key]

    def get(self, key: str) -> int:
        with self._lock:
            return self.counters.get(key, 0)

    def record(self, stage: str, value: float) -> None:
        with self._lock:
            self.stages.setdefault(stage, RollingStats(self._window)).add(value)

    @contextmanager
    def stage(self, stage: str):
        """Time a block in milliseconds under `<stage>_ms`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.record(f"{stage}_ms", (time.perf_counter() - start) * 1e3)

    def status(self, warn_counters: tuple = (), message: str = "") -> StatusData:
        """WARN when any counter named in `warn_counters` is non-zero."""
        with self._lock:
            values = {k: str(v) for k, v in sorted(self.counters.items())}
            for stage, stats in sorted(self.stages.items()):
                for key, value in stats.summary().items():
                    values[f"{stage}.{key}"] = f"{value:.3f}"
            problems = [k for k in warn_counters if self.counters.get(k, 0) > 0]
        level = WARN if problems else OK
        text = message or (("problems: " + ", ".join(problems)) if problems else "ok")
        return StatusData(self.name, self.hardware_id, level, text, values)


_INDEX = re.compile(r"\[\d+\]")


def drop_reason(exc: BaseException) -> str:
    """A bounded counter name for why one message was dropped: the field a ValueError names
    (indices stripped: `traces[].samples`), else the exception type (MemoryError, OverflowError, ...)."""
    kind = type(exc).__name__
    if isinstance(exc, ValueError):
        head = str(exc).split(":", 1)[0].strip()
        if head and ":" in str(exc) and len(head) <= 48 and " " not in head:
            return _INDEX.sub("[]", head)
        return "invalid"
    return kind


class DropCounter:
    """Messages a subscriber dropped, per topic and reason; thread-safe. The node logs a throttled
    warning and reports `dropped.<topic key>.<reason>` on /diagnostics."""

    def __init__(self):
        self._lock = threading.Lock()
        self.by_reason: Counter = Counter()
        self.by_key: Counter = Counter()
        self.last = ""

    def drop(self, key: str, exc: BaseException) -> tuple[str, int]:
        reason = drop_reason(exc)
        with self._lock:
            self.by_reason[f"{key}.{reason}"] += 1
            self.by_key[key] += 1
            self.last = f"{key}: {type(exc).__name__}: {str(exc)[:200]}"
            return reason, self.by_key[key]

    def total(self, key: str | None = None) -> int:
        with self._lock:
            return sum(self.by_key.values()) if key is None else self.by_key.get(key, 0)

    def values(self) -> dict:
        """{'dropped.<key>.<reason>': 'n'} for /diagnostics."""
        with self._lock:
            return {f"dropped.{k}": str(v) for k, v in sorted(self.by_reason.items())}


def diagnostic_array_msg(statuses: list[StatusData], stamp):
    """Build diagnostic_msgs/DiagnosticArray (stamp: builtin_interfaces/Time)."""
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

    array = DiagnosticArray()
    array.header.stamp = stamp
    for s in statuses:
        status = DiagnosticStatus(level=bytes([s.level]), name=s.name, message=s.message,
                                  hardware_id=s.hardware_id)
        status.values = [KeyValue(key=str(k), value=str(v)) for k, v in s.values.items()]
        array.status.append(status)
    return array
