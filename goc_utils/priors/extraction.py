"""Prior extraction: un-cached sampling of (class, seed) pairs with every block's branch outputs observed
(:class:`PriorRecorder` on the cache engine's ``unit_fn`` seam), accumulated into :class:`PriorStats`, resumable.

The protocol defaults to the paper's: one sample per class, seed 0 (every class starts
from the same noise, as the reference script seeds each class run with 0), cfg 4.0,
DDIM-20, no cache. Runs can be split into class shards and merged.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from goc_utils.cache.engine import CacheEngine
from goc_utils.cache.schedule import none_schedule
from goc_utils.errors import InvalidArgumentError, shorten
from goc_utils.files import format_bytes, state_dict_sha256
from goc_utils.model.dit import DiT
from goc_utils.model.sampler import draw_noise, generate
from goc_utils.priors.stats import (
    SAFETENSORS_HEADER_LIMIT,
    PriorsError,
    PriorStats,
    check_compatible,
    is_integer,
    read_priors_file,
    sketch_features,
)


class PriorRecorder:
    """Feeds one sampling batch's features into :class:`PriorStats` as the sampler produces them.

    The cache engine reports every unit output (``observe``, its ``on_unit`` observer) and a forward
    hook on every block reports the block output; the recorder keeps, per (block, kind), the previous
    step's copy (for the adjacent-step statistics) and the batch's sketches so far (for ``gram``).
    Only the first ``n`` rows of a batch (the conditional half of the CFG batch) are recorded.
    """

    def __init__(self, stats: PriorStats) -> None:
        self.stats = stats
        self.reset(0)

    def reset(self, n: int) -> None:
        """Start a batch of ``n`` samples."""
        self.n, self.step = n, 0
        self.previous: dict[tuple[int, int], torch.Tensor] = {}
        self.history: dict[tuple[int, int], list[torch.Tensor]] = {}

    def observe(self, step: int, block: int, kind: int, value: torch.Tensor, computed: bool = True) -> None:
        """Record the features ``value (B, T, D)`` of ``kind`` (0 attention, 1 MLP, 2 block output) at ``step``."""
        self.step = step
        x = value[: self.n]
        key = (block, kind)
        self.previous[key] = self.stats.add(step, block, kind, x, self.previous.get(key) if step > 0 else None)
        if kind < 2:
            sketch = sketch_features(x)
            history = self.history.setdefault(key, [])
            self.stats.add_gram(step, block, kind, sketch, history)
            history.append(sketch)

    def block_hook(self, block: int):
        """A forward hook for ``model.blocks[block]`` recording its output at the current step."""
        return lambda module, inputs, output: self.observe(self.step, block, 2, output)

    def finish(self, pairs: Sequence[tuple[int, int]]) -> None:
        """Count the batch's ``(class, seed)`` pairs in the statistics."""
        self.stats.count += len(pairs)
        self.stats.gram_count += len(pairs)
        self.stats.classes += [c for c, _ in pairs]
        self.stats.seeds += [s for _, s in pairs]


def extract_priors(
    model: DiT,
    model_name: str,
    classes: Sequence[int],
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    cfg_scale: float = 4.0,
    batch_size: int = 16,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    checkpoint_seconds: float = 300.0,
) -> PriorStats:
    """Un-cached sampling of every (class, seed) pair, accumulating :class:`PriorStats`.

    Each sample's noise is ``draw_noise(seed)`` for one image, so a sample does not depend
    on the batch it runs in: shards over classes merge to exactly one run.

    ``checkpoint``: a file where the statistics so far are saved (at most every ``checkpoint_seconds``,
    after a whole batch); a rerun with the same settings continues from it and ends with the same bytes
    as an uninterrupted run. The caller removes it once the result is saved.
    """
    bad = [c for c in classes if not 0 <= int(c) < model.num_classes]
    if bad:
        raise InvalidArgumentError(
            f"class id {bad[0]} is out of range for {model_name}; use 0..{model.num_classes - 1}"
        )
    seen: set[int] = set()
    repeated = next((c for c in map(int, classes) if c in seen or seen.add(c)), None)
    if repeated is not None:
        raise InvalidArgumentError(
            f"class {repeated} is listed twice; every class has the same noise (seed) here, so its samples would "
            "be counted twice: list each class once (--per-class K for more samples per class)"
        )
    if batch_size < 1:
        raise InvalidArgumentError(f"--batch-size must be >= 1 (got {batch_size})")
    count = len(classes) * len(seeds)  # checked before any list of them is built (seeds may be a range)
    top_seed = seeds[-1] if isinstance(seeds, range) and seeds.step > 0 and seeds else max(seeds, default=0)
    header = count * (len(str(max(classes, default=0))) + len(str(top_seed)) + 4)  # a range's max without a walk
    if header > SAFETENSORS_HEADER_LIMIT:
        raise InvalidArgumentError(
            f"{count:,} samples (classes x --per-class) do not fit one priors file: its header lists each sample's "
            f"class and seed (about {format_bytes(header)}; safetensors allows "
            f"{format_bytes(SAFETENSORS_HEADER_LIMIT)}); extract fewer samples per class"
        )
    pairs = [(int(c), int(s)) for s in seeds for c in classes]
    stats = PriorStats(model_name, steps, cfg_scale, model.depth, model.num_tokens, model.hidden_size)
    resume = {"pairs": pairs, "batch_size": batch_size, "done": 0}
    if checkpoint is not None:
        resume["weights"] = state_dict_sha256(model.state_dict())  # a resume must continue with the same weights
        if Path(checkpoint).exists() or Path(checkpoint).is_symlink():
            stats, resume["done"] = _resume_priors(Path(checkpoint), stats, resume)
    device = next(model.parameters()).device
    recorder = PriorRecorder(stats)
    engine = CacheEngine(none_schedule(steps, model.depth), model=model)
    engine.on_unit = recorder.observe
    handles = [block.register_forward_hook(recorder.block_hook(i)) for i, block in enumerate(model.blocks)]
    try:
        batches = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
        saved = time.monotonic()
        for index in tqdm(
            range(resume["done"], len(batches)), desc=f"priors {model_name}", disable=not progress,
            initial=resume["done"], total=len(batches),
        ):  # fmt: skip
            batch = batches[index]
            noise = torch.cat([draw_noise(model, 1, seed, device) for _, seed in batch])
            recorder.reset(len(batch))
            labels = [c for c, _ in batch]
            generate(model, labels, steps=steps, cfg_scale=cfg_scale, forward=engine.forward, noise=noise)
            recorder.finish(batch)
            if checkpoint is not None and time.monotonic() - saved >= checkpoint_seconds and index + 1 < len(batches):
                stats.save(checkpoint, resume | {"done": index + 1})
                saved = time.monotonic()
    finally:
        for handle in handles:
            handle.remove()
    return stats


def _resume_priors(path: Path, fresh: PriorStats, resume: dict) -> tuple[PriorStats, int]:
    """The statistics saved in a checkpoint and the number of batches they hold (one line if they do not fit)."""
    restart = "delete it to start over"
    stats, metadata = read_priors_file(path, "checkpoint", restart)
    try:
        stored = json.loads(metadata.get("resume", "null"))
    except ValueError:
        stored = None
    if not isinstance(stored, dict):
        raise PriorsError(f"checkpoint {shorten(path)!r} holds no resume state; {restart}")
    if {k: stored.get(k) for k in ("pairs", "batch_size")} != {
        "pairs": [list(p) for p in resume["pairs"]],
        "batch_size": resume["batch_size"],
    }:
        raise PriorsError(
            f"checkpoint {shorten(path)!r} is from an extraction with other classes, seeds or batch size; "
            f"rerun with the same settings to resume, or {restart}"
        )
    if stored.get("weights") != resume["weights"]:
        raise PriorsError(
            f"checkpoint {shorten(path)!r} is from an extraction with other model weights (--ckpt); rerun with "
            f"the same weights to resume, or {restart}"
        )
    check_compatible(fresh.header(), stats.header(), f"resume from {shorten(path)!r}")
    done, size = stored.get("done"), resume["batch_size"]
    batches = -(-len(resume["pairs"]) // size)
    pairs = [tuple(p) for p in resume["pairs"][: done * size]] if is_integer(done) and 1 <= done < batches else None
    if pairs is None or list(zip(stats.classes, stats.seeds, strict=True)) != pairs:
        raise PriorsError(f"checkpoint {shorten(path)!r} is damaged (its samples do not match its progress); {restart}")
    return stats, done
