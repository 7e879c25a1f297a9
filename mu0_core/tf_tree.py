"""A minimal TF tree (what tf2's buffer does for /tf and /tf_static, without tf2): edges
parent -> child with the latest transform T_parent_child; `lookup(target, source)` composes the
chain through the common ancestor and returns T_target_source.

Static edges (/tf_static) never expire; dynamic edges (/tf) keep their latest value and stamp
(no interpolation: a camera->base lookup for a frame takes the newest transform, and the caller
can refuse one older than it tolerates via `max_age_ns`). Pure numpy; the node converts messages.
"""
from __future__ import annotations

from dataclasses import dataclass

from mu0_core.camera import RigidTransform


class TransformUnavailable(LookupError):
    """No chain between two frames (yet), or a dynamic edge on the chain is too old."""


@dataclass
class _Edge:
    parent: str
    transform: RigidTransform       # T_parent_child
    stamp_ns: int
    static: bool


class TfTree:
    def __init__(self):
        self._edges: dict[str, _Edge] = {}    # child -> edge to its parent (a tree: one parent each)

    def set_transform(self, parent: str, child: str, transform: RigidTransform, stamp_ns: int = 0,
                      static: bool = False) -> None:
        parent, child = parent.lstrip("/"), child.lstrip("/")
        if not parent or not child or parent == child:
            raise ValueError(f"bad TF edge {parent!r} -> {child!r}")
        old = self._edges.get(child)
        if old is not None and not static and not old.static and stamp_ns < old.stamp_ns:
            return                                      # an older dynamic transform arrived late
        self._edges[child] = _Edge(parent, transform, int(stamp_ns), bool(static))

    def frames(self) -> set[str]:
        return set(self._edges) | {e.parent for e in self._edges.values()}

    def _chain(self, frame: str, now_ns: int | None, max_age_ns: int | None) -> list[tuple[str, RigidTransform]]:
        """[(frame, T_root_frame)] from `frame` up to its root."""
        out = [(frame, RigidTransform.identity())]
        seen = {frame}
        current, T = frame, RigidTransform.identity()
        while current in self._edges:
            edge = self._edges[current]
            if not edge.static and max_age_ns is not None and now_ns is not None and now_ns - edge.stamp_ns > max_age_ns:
                raise TransformUnavailable(f"transform {edge.parent} -> {current} is "
                                           f"{(now_ns - edge.stamp_ns) / 1e9:.2f} s old")
            T = edge.transform @ T          # T_parent_frame
            current = edge.parent
            if current in seen:
                raise TransformUnavailable(f"TF loop through {current!r}")
            seen.add(current)
            out.append((current, T))
        return out

    def lookup(self, target: str, source: str, now_ns: int | None = None,
               max_age_ns: int | None = None) -> RigidTransform:
        """T_target_source (maps points in `source` into `target`)."""
        target, source = target.lstrip("/"), source.lstrip("/")
        if target == source:
            return RigidTransform.identity()
        up_source = self._chain(source, now_ns, max_age_ns)   # (ancestor, T_ancestor_source)
        up_target = dict(self._chain(target, now_ns, max_age_ns))
        for ancestor, T_anc_source in up_source:
            if ancestor in up_target:
                return up_target[ancestor].inverse() @ T_anc_source
        raise TransformUnavailable(f"no TF chain between {target!r} and {source!r} "
                                   f"(known frames: {sorted(self.frames())})")
