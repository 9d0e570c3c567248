import subprocess
import sys

from posenc.cli import main


def test_encodings_lists_names_and_defaults(capsys):
    assert main(["encodings"]) == 0
    out = capsys.readouterr().out
    assert "sinusoidal" in out and "layout='interleaved'" in out
    assert "learned" in out and "max_len=1024" in out


def test_import_is_quiet():
    out = subprocess.run([sys.executable, "-c", "import posenc"], capture_output=True, text=True, check=True)
    assert out.stdout == "" and out.stderr == ""
