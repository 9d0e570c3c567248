from __future__ import annotations

import json
import pathlib

import pytest

from posenc.cli import main
from posenc.train.config import RunConfig, load_config_file, run_config_from_dict, to_toml


def test_toml_and_json_files(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.toml").write_text('[model]\nd_model = 64\nencoding = "sinusoidal"\n[data]\ntrain_lengths = [2, 9]\n')
    cfg = load_config_file(tmp_path / "a.toml")
    assert cfg.model.d_model == 64 and cfg.model.encoding == "sinusoidal" and cfg.data.train_lengths == [2, 9]
    assert cfg.model.num_heads == RunConfig().model.num_heads
    (tmp_path / "b.json").write_text(json.dumps({"optim": {"lr": 1, "schedule": "noam"}}))
    cfg = load_config_file(tmp_path / "b.json")
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)


def test_toml_round_trip(tmp_path: pathlib.Path) -> None:
    cfg = RunConfig()
    cfg.model.encoding, cfg.eval.lengths, cfg.train.compile = "sinusoidal*2|none", [3, 40], True
    (tmp_path / "c.toml").write_text(to_toml(cfg))
    assert load_config_file(tmp_path / "c.toml") == cfg


def test_toml_round_trip_of_any_text(tmp_path: pathlib.Path) -> None:
    """Characters beyond U+FFFF (which JSON would write as a surrogate pair, refused by TOML), DEL, quotes,
    backslashes and control characters come back as they were."""
    cfg = RunConfig()
    cfg.train.run_dir, cfg.data.path = "runs/\U0001F600 é", 'a"b\\c\td\x7fe\x01f'
    (tmp_path / "c.toml").write_text(to_toml(cfg), encoding="utf-8")
    assert load_config_file(tmp_path / "c.toml") == cfg


def test_errors_name_the_setting(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"model\.width.*valid: .*d_model"):
        run_config_from_dict({"model": {"width": 3}})
    with pytest.raises(ValueError, match="unknown config section"):
        run_config_from_dict({"modle": {}})
    with pytest.raises(TypeError, match=r"model\.d_model must be an int"):
        run_config_from_dict({"model": {"d_model": "wide"}})
    with pytest.raises(TypeError, match=r"train\.compile must be true or false"):
        run_config_from_dict({"train": {"compile": "maybe"}})
    (tmp_path / "bad.toml").write_text("[model\n")
    with pytest.raises(ValueError, match="bad.toml is not valid TOML"):
        load_config_file(tmp_path / "bad.toml")
    with pytest.raises(FileNotFoundError, match="none.toml"):
        load_config_file(tmp_path / "none.toml")


def test_cli_overrides_and_print_config(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.toml").write_text("[model]\nd_model = 64\nnum_layers = 5\n")
    argv = ["train", "--config", str(tmp_path / "a.toml"), "--model.d_model", "96", "--encoding", "rope*2|none",
            "--data.train_lengths", "1,8", "--train.compile", "true", "--precision", "fp32", "--print-config"]
    assert main(argv) == 0
    (tmp_path / "out.toml").write_text(capsys.readouterr().out)
    cfg = load_config_file(tmp_path / "out.toml")
    assert (cfg.model.d_model, cfg.model.num_layers, cfg.model.encoding) == (96, 5, "rope*2|none")
    assert cfg.data.train_lengths == [1, 8] and cfg.train.compile is True and cfg.train.precision == "fp32"


def test_help_lists_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "--model.d_model" in out and f"(default: {RunConfig().model.d_model})" in out
    assert "--optim.schedule" in out and "(default: 'cosine')" in out


def test_bad_override_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--model.d_model", "x", "--print-config"]) == 2
    assert "model.d_model must be an int" in capsys.readouterr().err


@pytest.mark.parametrize("name, content, message", [
    ("list.json", b"[1, 2]", r"config file .*list.json must hold a table of sections .*got a list"),
    ("number.json", b"5", r"config file .*number.json must hold a table of sections .*got a int"),
    ("latin1.toml", b"[model]\nencoding = \"caf\xe9\"\n", r"config file .*latin1.toml is not valid TOML text"),
])
def test_a_bad_file_is_named(tmp_path: pathlib.Path, name: str, content: bytes, message: str) -> None:
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ValueError, match=message):
        load_config_file(tmp_path / name)


def test_a_directory_is_not_a_config_file(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ValueError, match=r"config file .* is a directory"):
        load_config_file(tmp_path)
