"""Where a dataset run's batches are computed: ``"local"`` (this process, in ``Probe.run``) or ``"ray"``
(:mod:`attn_probe.engines.ray_engine`: Ray workers, this process writing the run). Both call
:meth:`attn_probe.Probe.explain_shard` per batch and write the same run directory."""
