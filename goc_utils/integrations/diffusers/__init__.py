"""diffusers: our DiT as a ``DiTTransformer2DModel`` / ``DiTPipeline`` (:mod:`.transformer`), the cache engine
as hooks on its blocks (:mod:`.hooks`: :func:`apply_cache` / :func:`remove_cache`), and diffusers' own
caches run as peers on the same noise (:mod:`.peers`).

Example:
    >>> from goc_utils.integrations.diffusers import apply_cache, remove_cache
"""

from goc_utils.integrations.diffusers.hooks import apply_cache, remove_cache

__all__ = ["apply_cache", "remove_cache"]
