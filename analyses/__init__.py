"""Studies that run end to end on a CPU and write their reports: ``python -m analyses.<name>`` (see README.md).

- ``sentiment_minilm``: minilm-sentiment on held-out Rotten Tomatoes snippets, every method family, human
  valence plausibility;
- ``agreement_smollm2``: SmolLM2-135M on subject-verb agreement prompts with known subject / attractor;
- ``position_variants``: seven position variants on synthetic tasks with known decisive tokens;
- ``flow_layers``: attention flow vs rollout vs raw attention, layer by layer.
"""
