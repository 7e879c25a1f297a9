"""Robot YAML variants for tests: the bundled sim configs drive the LEARNED expert (trace_policy);
tests of the geometric `trace_follower` (its motion along a given trace) use these copies, identical
but for the expert."""
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
_DIR = Path(tempfile.mkdtemp(prefix="mu0_test_robots_"))
FOLLOWER_PARAMS = {"mode": "relative", "max_ee_speed": 0.25, "min_validity": 0.5}


def follower_config(name: str, **params) -> str:
    """config/robots/<name>.yaml with `expert: trace_follower` (written once per test session)."""
    out = _DIR / f"{name}_follower.yaml"
    if not out.exists():
        data = yaml.safe_load((ROOT / "config" / "robots" / f"{name}.yaml").read_text())
        data["expert"] = {"name": "trace_follower", "params": {**FOLLOWER_PARAMS, **params}}
        out.write_text(yaml.safe_dump(data))
    return str(out)
