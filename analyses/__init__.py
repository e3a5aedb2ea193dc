"""Studies that run end to end on a CPU and write their reports (issue #7)."""
