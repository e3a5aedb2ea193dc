"""load_texts: every kind of source gives the same table, and every unusable input is refused with one line
that names the problem and what to do."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest

from attn_probe.data.user import load_texts

TEXTS = ["a gorgeous, witty movie", "dull", 'he said "NA", twice']
LABELS = [1, 0, 0]


def expected(with_labels: bool = True) -> pd.DataFrame:
    frame = pd.DataFrame({"example_id": range(3), "text": TEXTS})
    if with_labels:
        frame["label"] = LABELS
    return frame


def check(frame: pd.DataFrame, with_labels: bool = True) -> None:
    want = expected(with_labels)
    assert list(frame.columns) == list(want.columns)
    assert frame.example_id.tolist() == [0, 1, 2] and frame.example_id.dtype == "int64"
    assert frame.text.tolist() == TEXTS
    if with_labels:
        assert frame.label.tolist() == LABELS


def refused(match: str, *args, **kwargs) -> str:
    with pytest.raises(ValueError, match=match) as info:
        load_texts(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message  # one line
    return message


def write_jsonl(path, records) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


# ----------------------------------------------------------------------------------------------------
# sources
# ----------------------------------------------------------------------------------------------------
def test_csv(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"id": [7, 8, 9], "review": TEXTS, "stars": LABELS}).to_csv(path, index=False)
    check(load_texts(path, text_column="review", label_column="stars"))
    check(load_texts(str(path), text_column="review"), with_labels=False)
    assert load_texts(path, text_column="review", label_column="stars").label.dtype == "int64"


def test_csv_keeps_texts_as_written(tmp_path):
    path = tmp_path / "odd.csv"
    path.write_text("text,label\n007,1\nNA,0\nnull,1\n", encoding="utf-8")
    assert load_texts(path, label_column="label").text.tolist() == ["007", "NA", "null"]


def test_tsv_with_bare_quotes(tmp_path):
    path = tmp_path / "data.tsv"
    path.write_text(
        "sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in zip(TEXTS, LABELS, strict=True)), encoding="utf-8"
    )
    check(load_texts(path, text_column="sentence", label_column="label"))


def test_jsonl(tmp_path):
    path = tmp_path / "data.jsonl"
    write_jsonl(path, [{"text": t, "label": y, "extra": [1]} for t, y in zip(TEXTS, LABELS, strict=True)])
    check(load_texts(path, label_column="label"))
    path.write_text(path.read_text() + "\n\n", encoding="utf-8")  # blank lines at the end are no records
    check(load_texts(path, label_column="label"))


def test_parquet(tmp_path):
    path = tmp_path / "data.parquet"
    pd.DataFrame({"text": TEXTS, "label": LABELS}).to_parquet(path)
    check(load_texts(path, label_column="label"))


def test_dataframe_list_and_series():
    frame = pd.DataFrame({"text": TEXTS, "label": LABELS}, index=[10, 20, 30])
    check(load_texts(frame, label_column="label"))
    check(load_texts(TEXTS), with_labels=False)
    check(load_texts(tuple(TEXTS)), with_labels=False)
    check(load_texts(pd.Series(TEXTS)), with_labels=False)
    assert frame.index.tolist() == [10, 20, 30]  # the source is not modified


def test_string_labels_are_kept():
    table = load_texts(pd.DataFrame({"text": TEXTS, "y": ["pos", "neg", "neg"]}), label_column="y")
    assert table.label.tolist() == ["pos", "neg", "neg"]


def test_limit_keeps_the_first_rows_and_checks_only_those(tmp_path):
    frame = pd.DataFrame({"text": [*TEXTS, "   "], "label": [*LABELS, None]})
    table = load_texts(frame, label_column="label", limit=2)
    assert table.text.tolist() == TEXTS[:2] and table.label.tolist() == LABELS[:2]
    assert len(load_texts(TEXTS, limit=10)) == 3
    refused("limit must be a positive int", TEXTS, limit=0)


class FakeDataset:
    """What load_texts uses of a ``datasets.Dataset``: column_names, select, select_columns, to_pandas."""

    def __init__(self, columns: dict[str, list]) -> None:
        self.columns = columns
        self.converted: list[str] | None = None

    @property
    def column_names(self) -> list[str]:
        return list(self.columns)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values())))

    def select(self, indices) -> FakeDataset:
        return FakeDataset({k: [v[i] for i in indices] for k, v in self.columns.items()})

    def select_columns(self, names: list[str]) -> FakeDataset:
        return FakeDataset({k: self.columns[k] for k in names})

    def to_pandas(self) -> pd.DataFrame:
        return pd.DataFrame(self.columns)


class FakeDatasetDict(dict):
    @property
    def column_names(self) -> dict[str, list[str]]:
        return {k: v.column_names for k, v in self.items()}


@pytest.mark.skipif(importlib.util.find_spec("datasets") is not None, reason="the real datasets package is installed")
def test_hugging_face_dataset_by_its_interface():
    dataset = FakeDataset({"sentence": [*TEXTS, ""], "label": [*LABELS, 1], "image": [b"", b"", b"", b""]})
    check(load_texts(dataset, text_column="sentence", label_column="label", limit=3))
    message = refused("has no column 'text'; its columns are: 'sentence', 'label', 'image'", dataset)
    assert "text_column" in message
    refused("pass one split, e.g. load_texts\\(dataset\\['train'\\]", FakeDatasetDict(train=dataset))


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets is not installed")
def test_real_hugging_face_dataset():  # pragma: no cover - runs where datasets happens to be installed
    import datasets

    dataset = datasets.Dataset.from_dict({"text": TEXTS, "label": LABELS})
    check(load_texts(dataset, label_column="label"))


# ----------------------------------------------------------------------------------------------------
# refusals
# ----------------------------------------------------------------------------------------------------
def test_missing_column_lists_the_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"review": TEXTS, "stars": LABELS}).to_csv(path, index=False)
    message = refused("has no column 'text'; its columns are: 'review', 'stars'", path)
    assert "reviews.csv" in message and "text_column=" in message
    assert "label_column=" in refused("has no column 'label'", path, text_column="review", label_column="label")


def test_empty_sources(tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    refused("empty.csv' is empty", tmp_path / "empty.csv")
    (tmp_path / "header.csv").write_text("text,label\n", encoding="utf-8")
    refused("has no rows", tmp_path / "header.csv")
    (tmp_path / "blank.jsonl").write_text("\n \n", encoding="utf-8")
    refused("is empty", tmp_path / "blank.jsonl")
    refused("the list has no rows", [])
    refused("the DataFrame has no rows", pd.DataFrame({"text": []}))


def test_empty_and_whitespace_texts_name_their_rows(tmp_path):
    message = refused("empty or whitespace only in rows 1, 3 \\(of 4, counting from 0\\)", ["ok", "", "fine", " \t"])
    assert "drop those rows" in message
    path = tmp_path / "gaps.csv"
    path.write_text('text\nfine\n""\n   \n', encoding="utf-8")
    refused("rows 1, 2", path)
    refused("missing values in row 1 ", pd.DataFrame({"text": ["a", None]}))
    many = refused("and 2 more", [""] * 7)
    assert "rows 0, 1, 2, 3, 4 and 2 more (of 7" in many


def test_non_text_values_are_named(tmp_path):
    path = tmp_path / "numbers.jsonl"
    write_jsonl(path, [{"text": "fine"}, {"text": 5}, {"text": ["a"]}])
    refused("non-text values \\(int, list\\) in rows 1, 2", path)


def test_undecodable_bytes_name_the_file_and_the_encoding_option(tmp_path):
    path = tmp_path / "latin.csv"
    path.write_bytes("text\ncaf\u00e9 cr\u00e8me\nna\u00efve\n".encode("latin-1"))
    message = refused("latin.csv' is not valid utf-8 \\(byte 0xe9 on line 2\\)", path)
    assert "encoding='latin-1'" in message
    assert load_texts(path, encoding="latin-1").text.tolist() == ["caf\u00e9 cr\u00e8me", "na\u00efve"]
    refused("unknown encoding 'klingon'", path, encoding="klingon")


def test_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes("text\nhello\n".encode("utf-8-sig"))
    assert load_texts(path).text.tolist() == ["hello"]


def test_unknown_file_type_and_missing_file(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"PK")
    message = refused("unknown file type '.xlsx'", path)
    assert ".csv" in message and ".jsonl" in message and "DataFrame" in message
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_texts(tmp_path / "absent.csv")
    with pytest.raises(TypeError, match="source must be"):
        load_texts(42)


def test_label_column_with_missing_values(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("text,label\na,1\nb,\nc,NA\nd,0\n", encoding="utf-8")
    message = refused("label column 'label' has missing values in rows 1, 2 \\(of 4", path, label_column="label")
    assert "label_column=None" in message
    refused("list of strings has no labels", TEXTS, label_column="label")
    refused("both 'text'", TEXTS, label_column="text")


def test_bad_jsonl_lines_are_named(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "fine"}\n{"text": oops}\n', encoding="utf-8")
    refused("line 2 of .*bad.jsonl' is not valid JSON", path)
    path.write_text('{"text": "fine"}\n["a list"]\n', encoding="utf-8")
    refused("line 2 of .* is a JSON list, not an object", path)
