"""adpretrain_hf.settings_values: text -> typed values, name checks, and settings files.

Expected values come from Python's own readers (int(), float(), yaml.safe_load, difflib) applied
to the same text, never from the module; errors must be one line naming the problem.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Any, Optional

import pytest
import yaml

from adpretrain_hf.settings_values import (
    check_known,
    dataclass_hints,
    is_plain,
    read_settings_file,
    strip_optional,
    suggest,
    typed_value,
)


@dataclasses.dataclass
class Settings:
    learning_rate: float = 0.1
    epochs: int = 2
    milestones: list[int] = dataclasses.field(default_factory=list)
    resume: Optional[str] = None
    derived: int = dataclasses.field(default=0, init=False)


@pytest.mark.parametrize(
    "text, hint, expected",
    [
        ("42", int, int("42")),
        ("1e-4", float, float("1e-4")),
        ("-3.5", Optional[float], float("-3.5")),
        ("null", Optional[int], None),
        ("None", Optional[str], None),
        ("none", str, "none"),  # not Optional: the word is the text
        ("[7, 9]", list[int], yaml.safe_load("[7, 9]")),
        ("7, 9,", list[int], [int("7"), int("9")]),
        ("0.5,1", tuple[float, ...], (float("0.5"), float("1"))),
        ("{a: 1, b: [2]}", dict[str, Any], yaml.safe_load("{a: 1, b: [2]}")),
        ("", dict[str, Any], {}),
        ("0.25", Any, yaml.safe_load("0.25")),
    ],
)
def test_typed_value_reads_text_as_python_reads_it(text, hint, expected):
    got = typed_value(text, hint)
    assert got == expected and type(got) is type(expected)
    if isinstance(got, (list, tuple)):
        assert [type(item) for item in got] == [type(item) for item in expected]


@pytest.mark.parametrize("word, expected", [("Yes", True), ("on", True), ("1", True), ("OFF", False), (" n ", False)])
def test_bool_words(word, expected):
    assert typed_value(word, bool) is expected


def test_typed_values_pass_through_and_optional_helpers():
    assert typed_value(5, float) == 5 and typed_value([1], list[int]) == [1]  # YAML already typed them
    assert strip_optional(Optional[int]) == (int, True) and strip_optional(list[int]) == (list[int], False)
    assert strip_optional(int | None) == (int, True)
    assert [is_plain(h) for h in (str, Optional[float], bool, list[int], dict[str, int])] == [True, True, True, False, False]


@pytest.mark.parametrize(
    "text, hint, match",
    [
        ("big", int, "expected an int, got 'big'"),
        ("1.5.2", float, "expected a float, got '1.5.2'"),
        ("maybe", bool, "expected true or false, got 'maybe'"),
        ("[1, 2", list[int], r"'\[1, 2' is not valid YAML .*: write it like \[1, 2\]"),
        ("{a: ", dict[str, int], r"is not valid YAML .*: write it like \{key: value\}"),
        ("[a: 1]", dict[str, int], "expected a mapping"),
        ("x", complex, "cannot read a value of type"),
    ],
)
def test_bad_text_is_a_one_line_error(text, hint, match):
    with pytest.raises(ValueError, match=match) as caught:
        typed_value(text, hint)
    assert "\n" not in str(caught.value)


def test_suggest_names_the_closest_name_else_all_of_them():
    known = ["epochs", "seed", "batch_size"]
    assert suggest("epochz", known) == f"did you mean {difflib.get_close_matches('epochz', known, n=1)[0]!r}?"
    assert suggest("qqq", known) == "known: " + ", ".join(sorted(known))
    check_known(["seed", "epochs"], known, "a setting")  # all known: no error
    with pytest.raises(ValueError, match=r"'batch_sise' is not a setting: did you mean 'batch_size'\?"):
        check_known(["seed", "batch_sise", "qqq"], known, "a setting")  # the first unknown name


def test_dataclass_hints_are_the_init_fields():
    assert dataclass_hints(Settings) == {"learning_rate": float, "epochs": int, "milestones": list[int],
                                         "resume": Optional[str]}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_a_settings_file_is_typed_like_the_command_line(tmp_path, suffix):
    values = {"learning_rate": "1e-4", "epochs": 3, "milestones": "4,6", "resume": "null"}
    path = tmp_path / f"s{suffix}"
    path.write_text(json.dumps(values) if suffix == ".json" else "".join(f"{k}: {v}\n" for k, v in values.items()))
    got = read_settings_file(path, Settings)
    assert got == {"learning_rate": float("1e-4"), "epochs": 3, "milestones": [4, 6], "resume": None}
    (tmp_path / "empty.yaml").write_text("")
    assert read_settings_file(tmp_path / "empty.yaml", Settings) == {}


@pytest.mark.parametrize(
    "name, text, match",
    [
        ("missing.yaml", None, "does not exist: pass a .yaml or .json file"),
        ("list.yaml", "- 1\n- 2\n", "must hold a mapping"),
        ("typo.yaml", "epoch: 3\n", r"unknown keys in .*\['epoch'\] \(did you mean 'epochs'\?\)"),
        ("value.yaml", "epochs: many\n", "epochs in .*value.yaml: expected an int, got 'many'"),
        ("broken.yaml", "epochs: [3\nseed: 1\n", r"broken.yaml is not valid YAML \(.*, line \d+\): fix its syntax"),
        ("broken.json", '{"epochs": 3,}', r"broken.json is not valid JSON \(.*, line 1\): fix its syntax"),
    ],
)
def test_bad_settings_files_are_one_line_errors(tmp_path, name, text, match):
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(ValueError, match=match) as caught:
        read_settings_file(tmp_path / name, Settings)
    assert "\n" not in str(caught.value)
