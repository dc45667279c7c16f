"""The model room: DiT and its blocks (:mod:`.dit`), presets (:mod:`.presets`), checkpoint reading in one
place (:mod:`.checkpoints`, with diffusers' layout in :mod:`.diffusers_format`), diffusion (:mod:`.diffusion`),
the VAE (:mod:`.vae`), MAC counts (:mod:`.macs`), the tiny tiers' judges (:mod:`.judges`) and the sampler
(:mod:`.sampler`). Nothing here imports another room of ``goc_utils`` (only ``paths``, ``errors``, ``files``,
``datasets``)."""
