"""Data for probing: real text with human judgements, prompts and tasks with known ground truth, the user's own.

- :func:`load_rotten_tomatoes`: 10,605 movie-review snippets rated -4..+4 by 15 to 29 people, with a fixed
  held-out split; what the offline ``minilm-sentiment`` model is fine-tuned and evaluated on. Fetched once from
  PyPI (the vaderSentiment sdist) and cached.
- :func:`load_valence_lexicon` / :func:`plausibility`: VADER's human word valence, and how many of an
  explanation's top words people find clearly positive or negative, against a random ranking.
- :func:`agreement_prompts`: subject-verb agreement prompts ("The keys near the cabinet") whose subject and
  attractor positions are known; :func:`agreement_target` (``are - is``), :func:`token_positions`.
- :mod:`attn_probe.data.synthetic`: classification tasks for our small models whose decisive tokens are known
  (a marked token, a token at an offset from a marker, a pair of tokens).
- :func:`load_texts`: the user's texts from CSV / TSV / JSONL / Parquet, a DataFrame, a list or a
  ``datasets.Dataset``, checked with one-line messages.
"""

from attn_probe.data.agreement import (
    NOUNS,
    PLAIN_TEMPLATES,
    TEMPLATES,
    AgreementTemplate,
    Noun,
    agreement_prompts,
    agreement_target,
    correct_minus_wrong,
    role_mask,
    token_positions,
)
from attn_probe.data.lexicon import load_valence_lexicon, plausibility
from attn_probe.data.rotten_tomatoes import (
    assign_split,
    fetch_rotten_tomatoes_archive,
    load_rotten_tomatoes,
    parse_archive,
)
from attn_probe.data.synthetic import MarkedToken, OffsetToken, SyntheticBatch, SyntheticTask, TokenPair
from attn_probe.data.user import load_texts

__all__ = [
    "NOUNS",
    "PLAIN_TEMPLATES",
    "TEMPLATES",
    "AgreementTemplate",
    "MarkedToken",
    "Noun",
    "OffsetToken",
    "SyntheticBatch",
    "SyntheticTask",
    "TokenPair",
    "agreement_prompts",
    "agreement_target",
    "assign_split",
    "correct_minus_wrong",
    "fetch_rotten_tomatoes_archive",
    "load_rotten_tomatoes",
    "load_texts",
    "load_valence_lexicon",
    "parse_archive",
    "plausibility",
    "role_mask",
    "token_positions",
]
