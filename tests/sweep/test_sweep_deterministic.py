"""A sweep's [recipe] deterministic = true trains every point with --deterministic, and the
point's commands.sh train line says so."""

import dataclasses
import shlex
from pathlib import Path

from edgeseg.cli.train import command as train_command, config_from_options
from edgeseg.sweep.commands import point_commands
from edgeseg.sweep.config import load_sweep, train_config

SWEEP = (Path(__file__).parent / "tiny_sweep.toml").read_text()


def test_deterministic_reaches_each_points_training_and_its_command(tmp_path):
    (tmp_path / "s.toml").write_text(SWEEP.replace("lr = 0.01", "lr = 0.01\ndeterministic = true"))
    sweep = load_sweep(tmp_path / "s.toml")
    for point in sweep.points:
        cfg = train_config(sweep, point, tmp_path / "run")
        assert cfg.deterministic is True
        line = next(ln for ln in point_commands(sweep, point, tmp_path) if ln.startswith("edgeseg train"))
        assert "--deterministic" in shlex.split(line)
        ctx = train_command.make_context("train", shlex.split(line)[2:])
        with ctx:
            rebuilt = config_from_options(ctx.params, None, ctx)
        assert dataclasses.asdict(rebuilt) == dataclasses.asdict(cfg)
