"""Reports of what a probe found: seaborn figures of the tidy tables (``figures``)."""
