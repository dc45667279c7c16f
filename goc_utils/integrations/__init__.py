"""Other libraries' front ends on the same engine: diffusers (:mod:`.diffusers`: DiT in the diffusers format,
the engine as hooks on a ``DiTTransformer2DModel``, diffusers' own caches as peers) and cache-dit
(:mod:`.cachedit`: its DBCache as a peer, from the optional extra ``.[peers]``)."""
