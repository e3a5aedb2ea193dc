"""The 10,605 Rotten Tomatoes snippets with human sentiment ratings (Hutto & Gilbert, ICWSM 2014).

Why this data set: it is real movie-review text with a *graded* human judgement per sentence (the mean of 15 to 29
raters on a -4..+4 scale, and their standard deviation), so a sentiment model can be probed on examples where
people agree strongly and on ones where they do not. It is also small and reachable without a model hub: it
ships inside the source distribution of ``vaderSentiment`` 3.3.2 on PyPI, as
``additional_resources/hutto_ICWSM_2014.tar.gz`` (the wheel does not carry it, hence ``--no-binary :all:``).

What happens, once per machine:

1. ``python -m pip download --no-deps --no-binary :all: vaderSentiment==3.3.2`` into a temporary folder
   (or a local copy named by ``source=`` / ``$ATTN_PROBE_VADER_ARCHIVE``: the sdist, its extracted folder, or
   the inner ``hutto_ICWSM_2014.tar.gz``);
2. the inner archive is checked against a pinned SHA-256 and kept in the cache (2.3 MB);
3. ``movieReviewSnippets_GroundTruth.txt`` (id, mean rating, text; UTF-8, CRLF) and
   ``movieReviewSnippets_anonDataRatings.txt`` (id, mean, standard deviation, the raw ratings) are parsed,
   joined and stored as Parquet, so later loads read one small file.

The held-out split is a function of the snippet id alone (a keyed hash), so it does not depend on the order of
the rows, on numpy's generators or on which other rows are present.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

from attn_probe.models.cache import atomic_path, atomic_write_bytes, cache_dir

VADER_VERSION = "3.3.2"
SOURCE_ENV = "ATTN_PROBE_VADER_ARCHIVE"
ARCHIVE_NAME = "hutto_ICWSM_2014.tar.gz"
ARCHIVE_IN_SDIST = f"additional_resources/{ARCHIVE_NAME}"  # below the sdist's top folder vaderSentiment-3.3.2/
ARCHIVE_SHA256 = "d5bb07d87474b3eb8d30b4deccbc23f19d742a6c5718fbacc65485b70b95c5fa"
SNIPPETS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
RATINGS_MEMBER = "hutto_ICWSM_2014/movieReviewSnippets_anonDataRatings.txt"

N_SNIPPETS = 10_605
RATING_RANGE = (-4.0, 4.0)
CONFIDENT_RATING = 0.5  # |mean rating| at or above this: raters clearly lean one way
TEST_FRACTION = 0.15
SPLIT_KEY = "attn_probe/rotten_tomatoes/v1"
TABLE_VERSION = 1  # bump when the columns or their meaning change: the Parquet cache is keyed on it

COLUMNS = ("snippet_id", "text", "mean_rating", "rating_sd", "n_raters", "label", "confident", "split")

PIP_COMMAND = f"python -m pip download --no-deps --no-binary :all: vaderSentiment=={VADER_VERSION} -d <folder>"


def _data_dir() -> Path:
    return cache_dir("data", "rotten_tomatoes")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _pip_download(destination: Path) -> Path:
    """Download the vaderSentiment sdist into ``destination`` with this interpreter's pip; return its path."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"vaderSentiment=={VADER_VERSION}",
        "-d",
        str(destination),
    ]
    environment = {**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    help_text = (
        f"Run it by hand (`{PIP_COMMAND}`) where PyPI is reachable, then point ${SOURCE_ENV} (or the `source=` "
        f"argument) to the downloaded vaderSentiment-{VADER_VERSION}.tar.gz, its extracted folder, or the "
        f"{ARCHIVE_NAME} inside it."
    )
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=900, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise RuntimeError(f"could not run `{' '.join(command)}`: {error}. {help_text}") from error
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout or "").strip().splitlines()[-8:])
        raise RuntimeError(
            f"pip could not download the vaderSentiment {VADER_VERSION} source distribution (exit code "
            f"{result.returncode}; command: `{' '.join(command)}`):\n{tail}\n{help_text}"
        )
    found = sorted(path for path in destination.iterdir() if path.name.lower().endswith((".tar.gz", ".zip")))
    if not found:
        raise RuntimeError(f"pip reported success but left no source distribution in {destination}. {help_text}")
    return found[0]


def _archive_bytes(source: Path) -> bytes:
    """The bytes of ``hutto_ICWSM_2014.tar.gz`` from the sdist, its extracted folder, or the archive itself."""
    if source.is_dir():
        candidates = [source / ARCHIVE_IN_SDIST, *source.glob(f"*/{ARCHIVE_IN_SDIST}"), source / ARCHIVE_NAME]
        for candidate in candidates:
            if candidate.is_file():
                return candidate.read_bytes()
        raise FileNotFoundError(f"{source} is a folder without {ARCHIVE_IN_SDIST} (nor {ARCHIVE_NAME}) in it")
    if not source.is_file():
        raise FileNotFoundError(f"{source} does not exist (it was named as the vaderSentiment sdist or {ARCHIVE_NAME})")
    try:
        with tarfile.open(source, "r:*") as archive:
            names = archive.getnames()
            if SNIPPETS_MEMBER in names:  # the inner archive itself
                return source.read_bytes()
            inner = [name for name in names if name.endswith(ARCHIVE_IN_SDIST)]
            if inner:
                stream = archive.extractfile(inner[0])
                if stream is not None:
                    return stream.read()
    except tarfile.TarError as error:
        raise ValueError(f"{source} is not a readable .tar.gz ({error})") from error
    raise ValueError(
        f"{source} holds neither {ARCHIVE_IN_SDIST} (the vaderSentiment {VADER_VERSION} sdist) nor {SNIPPETS_MEMBER}"
    )


def fetch_rotten_tomatoes_archive(source: str | os.PathLike[str] | None = None, *, progress: bool = True) -> Path:
    """The path of ``hutto_ICWSM_2014.tar.gz`` in the cache, fetching it the first time.

    ``source`` (or ``$ATTN_PROBE_VADER_ARCHIVE``) names a local copy instead of downloading: the
    vaderSentiment 3.3.2 sdist, its extracted folder, or the inner archive. Whatever the origin, the archive
    must match the pinned SHA-256.
    """
    target = _data_dir() / ARCHIVE_NAME
    if target.is_file() and _sha256(target.read_bytes()) == ARCHIVE_SHA256:
        return target
    source = source if source is not None else os.environ.get(SOURCE_ENV) or None
    if source is not None:
        origin = str(source)
        data = _archive_bytes(Path(source).expanduser())
    else:
        if progress:
            print(f"attn_probe: downloading the vaderSentiment {VADER_VERSION} sdist with pip ...", file=sys.stderr)
        with tempfile.TemporaryDirectory(prefix="attn_probe_vader_") as folder:
            sdist = _pip_download(Path(folder))
            origin = f"PyPI ({sdist.name})"
            data = _archive_bytes(sdist)
    digest = _sha256(data)
    if digest != ARCHIVE_SHA256:
        raise ValueError(
            f"{ARCHIVE_NAME} from {origin} has SHA-256 {digest}, expected {ARCHIVE_SHA256}: it is not the file "
            f"shipped in vaderSentiment {VADER_VERSION}. Point ${SOURCE_ENV} to an unmodified copy."
        )
    return atomic_write_bytes(target, data)


def _read_member(archive: tarfile.TarFile, name: str) -> list[str]:
    stream = archive.extractfile(name)
    if stream is None:
        raise ValueError(f"{name} in {ARCHIVE_NAME} is not a regular file")
    text = stream.read().decode("utf-8")  # UTF-8 (133 snippets have accents or dashes), CRLF line ends
    # Not str.splitlines(): it would also split on form feeds and Unicode separators inside a snippet.
    return [line for line in text.replace("\r\n", "\n").split("\n") if line.strip()]


def assign_split(snippet_ids: pd.Series | list[int]) -> list[str]:
    """``"test"`` for about 15% of snippet ids, ``"train"`` for the rest; a function of each id alone."""
    threshold = int(TEST_FRACTION * 2**64)
    splits = []
    for snippet_id in snippet_ids:
        digest = hashlib.blake2b(f"{SPLIT_KEY}/{int(snippet_id)}".encode(), digest_size=8).digest()
        splits.append("test" if int.from_bytes(digest, "big") < threshold else "train")
    return splits


def parse_archive(path: str | os.PathLike[str]) -> pd.DataFrame:
    """The snippet table from ``hutto_ICWSM_2014.tar.gz`` (see :func:`load_rotten_tomatoes` for the columns)."""
    with tarfile.open(path, "r:gz") as archive:
        snippet_lines = _read_member(archive, SNIPPETS_MEMBER)
        rating_lines = _read_member(archive, RATINGS_MEMBER)
    snippets = []
    for line in snippet_lines:
        snippet_id, mean, text = line.split("\t", 2)
        snippets.append((int(snippet_id), text.strip(), float(mean)))
    ratings = {}
    for line in rating_lines:
        snippet_id, mean, sd, raw = line.split("\t")
        ratings[int(snippet_id)] = (float(mean), float(sd), len(json.loads(raw)))

    table = pd.DataFrame(snippets, columns=["snippet_id", "text", "mean_rating"])
    missing = set(table.snippet_id) ^ set(ratings)
    if len(table) != N_SNIPPETS or table.snippet_id.duplicated().any() or missing:
        raise ValueError(
            f"{ARCHIVE_NAME}: expected {N_SNIPPETS} distinct snippets with raw ratings, found {len(table)} "
            f"({len(missing)} ids without a match between the two files)"
        )
    table["rating_sd"] = [ratings[i][1] for i in table.snippet_id]
    table["n_raters"] = [ratings[i][2] for i in table.snippet_id]
    drift = (table.mean_rating - [ratings[i][0] for i in table.snippet_id]).abs().max()
    if drift > 1e-6:
        raise ValueError(f"{ARCHIVE_NAME}: the two files disagree on a mean rating by {drift}")
    sign = table.mean_rating.map(lambda rating: 1 if rating > 0 else 0 if rating < 0 else None)
    table["label"] = pd.array(sign, dtype="Int64")  # 1 positive, 0 negative, <NA> for the 37 means of exactly 0
    table["confident"] = table.mean_rating.abs() >= CONFIDENT_RATING
    table["split"] = assign_split(table.snippet_id)
    return table.sort_values("snippet_id", ignore_index=True)[list(COLUMNS)]


def load_rotten_tomatoes(source: str | os.PathLike[str] | None = None, *, progress: bool = True) -> pd.DataFrame:
    """The 10,605 Rotten Tomatoes snippets, one row each, sorted by ``snippet_id``.

    Columns:

    - ``snippet_id`` (int): the id in the original files, 1..10605;
    - ``text`` (str): the snippet, one or a few sentences (quotes are written as two apostrophes, as in the source);
    - ``mean_rating`` (float): the raters' mean on -4 (extremely negative) .. +4 (extremely positive);
    - ``rating_sd`` (float), ``n_raters`` (int, 15 to 29): their spread and how many rated it;
    - ``label`` (nullable int): 1 if the mean is positive, 0 if negative, <NA> if exactly 0;
    - ``confident`` (bool): ``|mean_rating| >= 0.5`` (10,072 rows); train a binary classifier on these;
    - ``split`` (str): ``"train"`` or ``"test"`` (about 15%), fixed by a hash of the snippet id.

    The first call fetches the data (see :func:`fetch_rotten_tomatoes_archive`) and caches the table as
    Parquet; later calls read that file.
    """
    table_path = _data_dir() / f"rotten_tomatoes_v{TABLE_VERSION}.parquet"
    if table_path.is_file():
        try:
            table = pd.read_parquet(table_path)
        except Exception:  # a file from a crashed writer of another version, or a damaged one: rebuild it
            table = None
        if table is not None and len(table) == N_SNIPPETS and tuple(table.columns) == COLUMNS:
            return table
    table = parse_archive(fetch_rotten_tomatoes_archive(source, progress=progress))
    with atomic_path(table_path) as temporary:
        table.to_parquet(temporary, index=False)
    return table


def _main() -> None:  # pragma: no cover - a convenience: python -m attn_probe.data.rotten_tomatoes
    table = load_rotten_tomatoes()
    print(table.groupby(["split", "confident"]).size().to_string())
    print(table.head().to_string())


if __name__ == "__main__":  # pragma: no cover
    _main()
