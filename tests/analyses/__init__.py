"""Tests of the studies in analyses/ (smoke runs and their helpers)."""
