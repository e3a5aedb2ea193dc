"""Real text with human judgements, fetched once from PyPI and cached (no model or data hub involved).

- :func:`load_rotten_tomatoes`: 10,605 movie-review snippets rated -4..+4 by 15 to 29 people, with a fixed
  held-out split; what the offline ``minilm-sentiment`` model is fine-tuned and evaluated on.
"""

from attn_probe.data.rotten_tomatoes import (
    assign_split,
    fetch_rotten_tomatoes_archive,
    load_rotten_tomatoes,
    parse_archive,
)

__all__ = ["assign_split", "fetch_rotten_tomatoes_archive", "load_rotten_tomatoes", "parse_archive"]
