import subprocess
import sys

from kftune import __version__
from kftune.cli import COMMANDS, main


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert name in out


def test_help_imports_neither_torch_nor_kfp():
    code = ("import sys, kftune.cli; kftune.cli.main(['--help']); "
            "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','kfp','matplotlib','minio')]; "
            "sys.exit(1 if bad else 0)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_unknown_command_is_a_usage_error(capsys):
    assert main(["frobnicate"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
