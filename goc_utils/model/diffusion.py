"""Gaussian diffusion with DiT's semantics: our own implementation.

DiT (facebookresearch/DiT) uses a copy of ADM's ``gaussian_diffusion``; this module
reproduces its behaviour for what the study needs:

* linear betas 1e-4 .. 0.02 over 1,000 training steps (float64 tables);
* respacing with ADM's ``space_timesteps`` semantics (``"20"``, ``"ddim20"``, ``"10,10"``);
  the model is always called with the *original* timestep of a respaced step;
* eps prediction with a learned-range variance (``learn_sigma``), ``clip_denoised=False``;
* DDIM (eta 0 by default, the study's sampler) and DDPM ancestral steps;
* classifier-free guidance exactly as DiT: the batch is ``[z, z]`` with labels
  ``[y, null]``; for 4-channel latents guidance is applied to the first 3 eps channels
  only (DiT's "exact reproducibility" quirk), otherwise to all eps channels; the
  variance channels pass through;
* the training loss: MSE on eps + the variational bound term for the variance.

Step index ``s`` counts sampling iterations ``0 .. N-1``; ``s = 0`` is the noisiest step.
Every model call receives ``step=s`` so that a cache engine can plug in.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from goc_utils.errors import InvalidArgumentError

NUM_TRAIN_TIMESTEPS = 1000

Denoiser = Callable[..., torch.Tensor]
"""``denoiser(x, t_model, y, step=s) -> model output (N, 2C, H, W)``."""


def linear_betas(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> np.ndarray:
    """ADM's linear schedule, rescaled so that 1,000 steps span betas 1e-4 .. 0.02 (float64)."""
    scale = 1000 / num_timesteps
    return np.linspace(scale * 0.0001, scale * 0.02, num_timesteps, dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int]) -> set[int]:
    """Timesteps kept when respacing ``num_timesteps`` steps (ADM semantics).

    ``section_counts`` is a comma-separated list of counts per equal section
    (``"20"``, ``"10,15,20"``), an int, or ``"ddimN"`` for DDIM's fixed stride (the
    stride ``i`` such that ``range(0, num_timesteps, i)`` has exactly N elements).

    Example:
        >>> sorted(space_timesteps(1000, "10"))[:3]
        [0, 111, 222]
    """
    if isinstance(section_counts, str):
        text = section_counts.strip()
        if text.startswith("ddim"):
            try:
                desired = int(text[len("ddim") :])
            except ValueError:
                raise InvalidArgumentError(f"malformed respacing {section_counts!r}; use e.g. 'ddim20'") from None
            for stride in range(1, num_timesteps):
                if len(range(0, num_timesteps, stride)) == desired:
                    return set(range(0, num_timesteps, stride))
            raise InvalidArgumentError(
                f"cannot create exactly {desired} steps with an integer stride from {num_timesteps}; use '{desired}'"
            )
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise InvalidArgumentError(
                f"malformed respacing {section_counts!r}; use a step count such as '20', 'ddim20' or '10,10'"
            ) from None
    elif isinstance(section_counts, int):
        counts = [section_counts]
    else:
        counts = [int(c) for c in section_counts]
    if not counts or any(c < 1 for c in counts):
        raise InvalidArgumentError(f"steps must be >= 1 (got {section_counts!r})")
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, []
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise InvalidArgumentError(f"cannot take {count} steps from a section of {size} timesteps")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.append(start + round(position))
            position += stride
        start += size
    return set(kept)


def _gather(table: np.ndarray, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """``table[t]`` (float64) cast to float32 and shaped ``(N, 1, ..., 1)`` for broadcasting."""
    values = torch.from_numpy(table).to(t.device)[t].float()
    return values.view(-1, *([1] * (ndim - 1)))


@dataclass
class GaussianDiffusion:
    """A (possibly respaced) diffusion process with eps prediction and learned-range variance.

    Attributes:
        timestep_map: original timestep of each respaced index ``i`` (ascending); the
            model is called with ``timestep_map[i]``.
        betas: betas of the respaced chain, float64, shape ``(num_timesteps,)``.
        learn_sigma: model outputs ``2C`` channels (eps, variance values in [-1, 1]).
    """

    timestep_map: np.ndarray
    betas: np.ndarray
    learn_sigma: bool = True
    num_timesteps: int = field(init=False)

    def __post_init__(self) -> None:
        betas = self.betas
        self.num_timesteps = len(betas)
        alphas = 1.0 - betas
        self.alphas_cumprod = np.cumprod(alphas, axis=0)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # log of the posterior variance, with the t = 0 entry (0) replaced by the t = 1 value;
        # a 1-step chain (where ADM leaves this table empty and fails) uses log(beta).
        self.posterior_log_variance_clipped = (
            np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            if len(self.posterior_variance) > 1
            else np.log(betas)
        )
        self.log_betas = np.log(betas)
        self.posterior_mean_coef1 = betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Noise clean data ``x_start`` to respaced index ``t``."""
        n = x_start.ndim
        return (
            _gather(self.sqrt_alphas_cumprod, t, n) * x_start
            + _gather(self.sqrt_one_minus_alphas_cumprod, t, n) * noise
        )

    def q_posterior_mean(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n = x_t.ndim
        return _gather(self.posterior_mean_coef1, t, n) * x_start + _gather(self.posterior_mean_coef2, t, n) * x_t

    def model_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Respaced indices -> original timesteps passed to the model (int64)."""
        return torch.from_numpy(self.timestep_map).to(t.device)[t]

    # ------------------------------------------------------------------ reverse process
    def p_mean_variance(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> dict[str, torch.Tensor]:
        """Posterior mean / log-variance / x0 prediction from a model output ``(N, 2C, H, W)``."""
        c = x.shape[1]
        n = x.ndim
        if self.learn_sigma:
            if model_output.shape[1] != 2 * c:
                raise InvalidArgumentError(
                    f"model output has {model_output.shape[1]} channels, expected {2 * c} (eps + learned variance)"
                )
            eps, var_values = torch.split(model_output, c, dim=1)
            min_log = _gather(self.posterior_log_variance_clipped, t, n)
            max_log = _gather(self.log_betas, t, n)
            frac = (var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        else:
            eps = model_output
            log_variance = _gather(self.posterior_log_variance_clipped, t, n).expand_as(x)
        pred_xstart = (
            _gather(self.sqrt_recip_alphas_cumprod, t, n) * x - _gather(self.sqrt_recipm1_alphas_cumprod, t, n) * eps
        )
        mean = self.q_posterior_mean(pred_xstart, x, t)
        return {"mean": mean, "log_variance": log_variance, "pred_xstart": pred_xstart, "eps": eps}

    def ddpm_step(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """One ancestral step ``x_t -> x_{t-1}`` (draws ``randn_like(x)``; no noise at t = 0)."""
        out = self.p_mean_variance(model_output, x, t)
        noise = torch.randn_like(x)
        nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        return out["mean"] + nonzero * torch.exp(0.5 * out["log_variance"]) * noise

    def ddim_step(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor, eta: float = 0.0) -> torch.Tensor:
        """One DDIM step ``x_t -> x_{t-1}`` (draws ``randn_like(x)`` like ADM, used only if eta > 0)."""
        n = x.ndim
        out = self.p_mean_variance(model_output, x, t)
        pred_xstart = out["pred_xstart"]
        eps = (_gather(self.sqrt_recip_alphas_cumprod, t, n) * x - pred_xstart) / _gather(
            self.sqrt_recipm1_alphas_cumprod, t, n
        )
        alpha_bar = _gather(self.alphas_cumprod, t, n)
        alpha_bar_prev = _gather(self.alphas_cumprod_prev, t, n)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        noise = torch.randn_like(x)
        mean_pred = pred_xstart * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma**2) * eps
        nonzero = (t != 0).float().view(-1, *([1] * (n - 1)))
        return mean_pred + nonzero * sigma * noise

    def sample_loop(
        self,
        denoiser: Denoiser,
        noise: torch.Tensor,
        y: torch.Tensor,
        sampler: str = "ddim",
        eta: float = 0.0,
        progress: bool = False,
        callback: Callable[[int, torch.Tensor], None] | None = None,
    ) -> torch.Tensor:
        """Run the reverse chain from ``noise`` and return the final sample.

        ``denoiser(x, t_model, y, step=s)`` is called once per step ``s = 0 .. N-1``
        (``s = 0`` noisiest) with the original timesteps ``t_model``. ``callback(s, x)``
        sees the sample after each step.
        """
        if sampler not in ("ddim", "ddpm"):
            raise InvalidArgumentError(f"unknown sampler {sampler!r}; use 'ddim' or 'ddpm'")
        x = noise
        indices = list(range(self.num_timesteps))[::-1]
        for step, i in enumerate(tqdm(indices, desc=f"{sampler}-{self.num_timesteps}", disable=not progress)):
            t = torch.full((x.shape[0],), i, device=x.device, dtype=torch.long)
            with torch.no_grad():
                model_output = denoiser(x, self.model_timesteps(t), y, step=step)
                if sampler == "ddim":
                    x = self.ddim_step(model_output, x, t, eta)
                else:
                    x = self.ddpm_step(model_output, x, t)
            if callback is not None:
                callback(step, x)
        return x

    # ------------------------------------------------------------------ training
    def training_losses(
        self,
        model: Callable[..., torch.Tensor],
        x_start: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        noise: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """DiT's loss per sample: eps MSE + the VLB term (in bits/dim) for the learned variance.

        ``model(x_t, t_model, y)``; the VLB term sees a detached eps so it trains only the
        variance, as in ADM's hybrid objective.
        """
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        model_output = model(x_t, self.model_timesteps(t), y)
        c = x_start.shape[1]
        terms: dict[str, torch.Tensor] = {}
        if self.learn_sigma:
            eps, var_values = torch.split(model_output, c, dim=1)
            frozen = torch.cat([eps.detach(), var_values], dim=1)
            terms["vb"] = self._vb_bits_per_dim(frozen, x_start, x_t, t)
        else:
            eps = model_output
        terms["mse"] = ((noise - eps) ** 2).mean(dim=list(range(1, x_start.ndim)))
        terms["loss"] = terms["mse"] + terms.get("vb", 0.0)
        return terms

    def _vb_bits_per_dim(
        self, model_output: torch.Tensor, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
    ) -> torch.Tensor:
        dims = list(range(1, x_start.ndim))
        true_mean = self.q_posterior_mean(x_start, x_t, t)
        true_log_var = _gather(self.posterior_log_variance_clipped, t, x_t.ndim)
        out = self.p_mean_variance(model_output, x_t, t)
        kl = normal_kl(true_mean, true_log_var, out["mean"], out["log_variance"]).mean(dim=dims) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, out["mean"], 0.5 * out["log_variance"])
        nll = nll.mean(dim=dims) / math.log(2.0)
        return torch.where(t == 0, nll, kl)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of data in [-1, 1] discretised to 8 bits under a Gaussian (elementwise, nats)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = _approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = _approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def create_diffusion(timestep_respacing: str | int | None = "", learn_sigma: bool = True) -> GaussianDiffusion:
    """DiT's ``create_diffusion``: linear betas, respaced to ``timestep_respacing``.

    ``""`` / None keeps all 1,000 steps (training); ``"20"``, ``20``, ``"ddim20"``,
    ``"250"`` give respaced samplers.

    Example:
        >>> create_diffusion("20").num_timesteps
        20
    """
    base_betas = linear_betas(NUM_TRAIN_TIMESTEPS)
    if timestep_respacing in (None, ""):
        timestep_respacing = str(NUM_TRAIN_TIMESTEPS)
    use = space_timesteps(NUM_TRAIN_TIMESTEPS, timestep_respacing)
    alphas_cumprod = np.cumprod(1.0 - base_betas)
    last, new_betas, kept = 1.0, [], []
    for i, alpha_cumprod in enumerate(alphas_cumprod):
        if i in use:
            new_betas.append(1 - alpha_cumprod / last)
            last = alpha_cumprod
            kept.append(i)
    return GaussianDiffusion(
        timestep_map=np.array(kept, dtype=np.int64),
        betas=np.array(new_betas, dtype=np.float64),
        learn_sigma=learn_sigma,
    )


def guidance_channels(in_channels: int) -> int:
    """eps channels that classifier-free guidance mixes: 3 for DiT's 4-channel latents, else all."""
    return 3 if in_channels == 4 else in_channels


def cfg_denoiser(forward: Callable[..., torch.Tensor], cfg_scale: float, in_channels: int) -> Denoiser:
    """Wrap ``forward(x, t, y, step=s)`` with DiT's classifier-free guidance.

    The batch is ``[z, z]`` with labels ``[y, null]``: the first half is the conditional
    copy. Guidance ``uncond + cfg_scale * (cond - uncond)`` is applied to the first
    :func:`guidance_channels` eps channels and written to both halves; the remaining eps
    channels and the variance channels pass through from each half's own output.
    """
    guided = guidance_channels(in_channels)

    def denoise(x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, step: int) -> torch.Tensor:
        half = x[: len(x) // 2]
        out = forward(torch.cat([half, half], dim=0), t, y, step=step)
        eps, rest = out[:, :guided], out[:, guided:]
        cond_eps, uncond_eps = torch.split(eps, len(eps) // 2, dim=0)
        half_eps = uncond_eps + cfg_scale * (cond_eps - uncond_eps)
        return torch.cat([torch.cat([half_eps, half_eps], dim=0), rest], dim=1)

    return denoise
