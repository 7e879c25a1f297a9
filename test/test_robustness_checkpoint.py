"""Strict checkpoint configs (issue 13 defect #6): a config.json missing a required model field, or
with a field of the wrong type, is refused with an error naming the file and the field; a default
never stands in for a trained setting. The bundled checkpoint still loads."""
import json
import shutil
from pathlib import Path

import pytest

from mu0_policy.model.checkpoint import CheckpointError, read_config
from mu0_policy.model.config import Mu0Config

SMALL = Path("checkpoints/mu0_small")


def copy_config(tmp_path, edit):
    doc = json.loads((SMALL / "config.json").read_text())
    edit(doc)
    (tmp_path / "config.json").write_text(json.dumps(doc))
    return tmp_path


def test_bundled_checkpoint_has_every_required_field_and_loads():
    doc = json.loads((SMALL / "config.json").read_text())
    assert set(Mu0Config.required_fields()) <= set(doc["model"])
    cfg, _ = read_config(SMALL)
    assert cfg.model_id == "mu0_small"


@pytest.mark.parametrize("field", Mu0Config.required_fields())
def test_missing_required_field_is_refused_naming_file_and_field(tmp_path, field):
    root = copy_config(tmp_path, lambda d: d["model"].pop(field))
    with pytest.raises(CheckpointError) as err:
        read_config(root)
    assert str(root / "config.json") in str(err.value) and f"model.{field}" in str(err.value)
    assert err.value.field == f"model.{field}"


@pytest.mark.parametrize("field,value", [("horizon", "32"), ("use_bspline", 1), ("mlp_ratio", "3"),
                                         ("expert_dim", 128.0), ("backbone", 3), ("expert_layers", True)])
def test_wrong_type_is_refused_naming_the_field(tmp_path, field, value):
    root = copy_config(tmp_path, lambda d: d["model"].__setitem__(field, value))
    with pytest.raises(CheckpointError, match=f"model.{field}"):
        read_config(root)


def test_non_strict_from_dict_still_fills_defaults_for_presets():
    assert Mu0Config.from_dict({"horizon": 16}).horizon == 16
    with pytest.raises(ValueError, match="Mu0Config.history: required"):
        Mu0Config.from_dict({"horizon": 16}, strict=True)
