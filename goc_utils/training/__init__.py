"""The training room: the tiny DiT presets (:mod:`.dit`, one loop), their judges (:mod:`.judges`), the
tiny-fashion VAE (:mod:`.vae`) and Learning-to-Cache routers (:mod:`.routers`). Every loop checkpoints
atomically and resumes to identical bytes."""
