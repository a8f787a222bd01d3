"""corral's benchmark suite (``make bench``, ``make bench-quick``)."""
