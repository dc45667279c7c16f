"""The evaluation room: sampling at scale into npz files (:mod:`.sampling`: per-sample seeds, resume,
torchrun), ``goc eval-sample`` / ``goc eval`` and their result rows (:mod:`.eval`), latency (:mod:`.bench`),
tables (:mod:`.tables`) and the metrics (:mod:`.metrics`: FID / sFID / IS / precision / recall, PSNR / SSIM,
feature extractors)."""
