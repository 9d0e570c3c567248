import argparse

import pytest

from posenc._checks import bool_word
from posenc.encodings import parse_spec
from posenc.train.config import RunConfig, apply_overrides


@pytest.mark.parametrize("text, value", [("true", True), (" YES ", True), ("On", True), ("1", True),
                                         ("false", False), ("no", False), ("OFF", False), ("0", False)])
def test_bool_word_reads_the_usual_spellings(text, value):
    assert bool_word(text) is value


@pytest.mark.parametrize("text", ["", "2", "maybe", "t", "none"])
def test_bool_word_is_none_for_anything_else(text):
    assert bool_word(text) is None


def test_spec_options_and_settings_read_booleans_alike():
    _, opts = parse_spec("shaw:values=Off")
    assert opts["values"] is False
    cfg = apply_overrides(RunConfig(), argparse.Namespace(**{"train.compile": "YES"}))
    assert cfg.train.compile is True
