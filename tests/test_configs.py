"""The shipped configs/*.yaml resolve to complete, valid training configs (no training)."""

import argparse
from pathlib import Path

import pytest

from s5ssm.cli import ALL_DEFAULTS, resolve_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_configs_are_shipped():
    assert {p.stem for p in CONFIGS} >= {"listops-paper", "pathfinder-paper", "pathx-paper"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_resolves_to_its_own_values(path):
    import yaml

    args = argparse.Namespace(config=str(path), **{name: None for name in ALL_DEFAULTS})
    cfg = resolve_config(args)
    written = yaml.safe_load(path.read_text())
    for key, value in written.items():
        assert cfg[key] == value, key  # nothing in the file is overridden by a task default
    assert set(ALL_DEFAULTS) <= set(cfg)
