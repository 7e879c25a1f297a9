"""Every `mu0 <sub> --help` runs and exits 0 under its own name, and every `mu0 ...` command line
of the README parses with the tool's real argument parser (nothing is executed past parsing)."""
import argparse
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from mu0_app import cli

ROOT = Path(__file__).resolve().parents[1]


class Parsed(Exception):
    def __init__(self, namespace):
        super().__init__("parsed")
        self.namespace = namespace


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith("mu0 "):
                cmds.append(line)
    return cmds


@pytest.mark.parametrize("sub", sorted(cli.SUBCOMMANDS))
def test_every_subcommand_help_exits_0_under_its_own_name(sub, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main([sub, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mu0 {sub} "), out[:200]
    assert "trace-extract" not in out


def test_mu0_help_and_a_subcommand_help_from_the_console_script():
    env = {**os.environ}
    for argv in (["--help"], ["extract", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "mu0_app.cli", *argv], capture_output=True, text=True,
                              timeout=120, cwd="/", env=env)
        assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: mu0 extract ")
    assert "`mu0 extract`" in proc.stdout


def test_readme_command_lines_parse(monkeypatch):
    cmds = readme_commands()
    subs = {shlex.split(c)[1] for c in cmds}
    # the everyday commands of the README cover these tools
    assert {"sim", "run", "replay", "record", "extract", "view-dataset", "train", "eval", "export"} <= subs
    original = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise Parsed(original(self, args, namespace))

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    for line in cmds:
        argv = shlex.split(line)[1:]
        with pytest.raises(Parsed) as got:
            cli.main(argv)
        assert isinstance(got.value.namespace, argparse.Namespace), line


def test_a_bad_option_is_a_usage_error_not_a_traceback(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["extract", "in", "out", "--no-such-option"])
    assert exc.value.code == 2
    assert "usage: mu0 extract" in capsys.readouterr().err
    assert cli.main(["no-such-command"]) == 2
