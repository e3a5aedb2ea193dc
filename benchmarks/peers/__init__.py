"""Peer tools: the libraries a user would pick instead of attn_probe, run side by side with it.

A peer often pins versions our project cannot share (ferret-xai wants transformers < 5 and numpy < 2), so it
never enters our dependencies: :mod:`benchmarks.peers.venv` installs it into a virtual environment of its own,
under the cache (``<cache root>/peers/<name>``), once per machine, and the benchmark runs it there in a
subprocess that answers timing requests, so both sides are timed in one run on the same sentences.

- :mod:`benchmarks.peers.venv`: create / reuse a peer's virtual environment (``ensure_peer``).
- :mod:`benchmarks.peers.ferret_peer`: the entry comparing ferret-xai's explain + evaluate with our probe
  (its worker script, run by ferret's own interpreter, is ``ferret_worker.py``).
"""
