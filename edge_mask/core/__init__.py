"""The ground: shared types, errors, the registry, box arithmetic, percentiles and retry backoff.

Rule: core/ imports nothing of edge_mask outside itself and does no I/O. Every room may import it, module
by module (`edge_mask.core.types`), so it has no package face to keep in step.
"""
