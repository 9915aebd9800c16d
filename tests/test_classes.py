import json
from pathlib import Path

import pytest

from geoct.classes import POTSDAM, ClassTable
from geoct.errors import InputError


def test_potsdam_order_and_colours() -> None:
    assert POTSDAM.num_classes == 6
    assert POTSDAM.names[1] == "building"
    assert POTSDAM.colors[POTSDAM.names.index("car")] == (255, 255, 0)
    assert POTSDAM.ignore_index == 255


def test_round_trip_through_json(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(POTSDAM.to_dict()))
    assert ClassTable.from_json(path) == POTSDAM


def test_list_form_of_classes_json(tmp_path: Path) -> None:
    path = tmp_path / "classes.json"
    path.write_text(
        json.dumps(
            [{"name": "water", "color": [0, 0, 255]}, {"name": "land", "color": [0, 128, 0]}]
        )
    )
    table = ClassTable.from_json(path)
    assert table.names == ("water", "land")
    assert table.colors == ((0, 0, 255), (0, 128, 0))


@pytest.mark.parametrize(
    "content, problem",
    [("{", "not a valid class table"), ('{"names": ["a"]}', "not a valid class table")],
)
def test_bad_class_table_names_the_file(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "classes.json"
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as info:
        ClassTable.from_json(path)
    assert str(path) in str(info.value)


def test_missing_class_table(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="class table not found"):
        ClassTable.from_json(tmp_path / "nope.json")


def test_ignore_index_cannot_be_a_class() -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        ClassTable(names=("a", "b"), colors=((0, 0, 0), (1, 1, 1)), ignore_index=1)
