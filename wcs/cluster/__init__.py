"""Running wcs as more than one process: the worker supervisor, its private Redis, placements."""
