"""crema_fast.train.config_doc: the config reference is generated from the dataclasses, covers every
field with its default, and is the README's "Config reference" section (drift fails here)."""

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from crema_fast.train.config import SECTIONS, RunConfig
from crema_fast.train.config_doc import TITLE, field_docs, reference

README = Path(__file__).resolve().parents[2] / "README.md"


def _rows(text: str) -> dict[str, tuple[str, str]]:
    """{"section.field": (default, meaning)} of the reference's field tables."""
    rows = {}
    for m in re.finditer(r"^\| `([a-z_]+\.[a-z_]+)` \| `([^`]*)` \| (.*) \|$", text, re.M):
        rows[m.group(1)] = (m.group(2), m.group(3))
    return rows


def test_every_field_of_every_section_with_its_default():
    rows = _rows(reference())
    defaults = RunConfig().to_dict()
    expected = {f"{s}.{f.name}" for s, kind in SECTIONS.items() for f in dataclasses.fields(kind)}
    assert set(rows) == expected and len(rows) == 58
    for key, (default, meaning) in rows.items():
        section, name = key.split(".")
        assert json.loads(default) == json.loads(json.dumps(defaults[section][name])), key
        assert len(meaning) > 10, key
    assert rows["optim.lr"] == ("0.001", "Peak learning rate, reached at the end of the warmup.")
    assert rows["data.highpass"][0] == "0.67" and rows["data.notch"][0] == "null"
    assert rows["optim.betas"][0] == "[0.9, 0.95]" and rows["train.compile"][0] == "false"


def test_presets_table_names_what_each_preset_sets():
    text = reference()
    (base,) = [line for line in text.splitlines() if line.startswith("| `base` |")]
    assert "`base` (dim=768, depth=12, heads=12" in base and "train.batch_size=512" in base
    assert "optim.lr=0.0003" in base


def test_a_field_without_a_docstring_is_an_error():
    @dataclass(frozen=True)
    class Half:
        documented: int = 1
        """Says what it is."""
        bare: float = 2.0

    with pytest.raises(TypeError, match=r"Half: expected a docstring under every field, got none under \['bare'\]"):
        field_docs(Half)


def test_readme_section_equals_the_generated_reference():
    text = README.read_text(encoding="utf-8")
    assert text.count(TITLE + "\n") == 1, f"{README}: expected one {TITLE!r} section"
    start = text.index(TITLE + "\n")
    after = re.search(r"^## ", text[start + len(TITLE):], re.M)
    section = text[start:start + len(TITLE) + after.start()] if after else text[start:]
    assert section.rstrip("\n") + "\n" == reference(), (
        f"{README}: the {TITLE!r} section differs from `crema-fast pretrain --print-config`; paste its output")
