"""diffir.schedules: the named beta schedules and the DDPM quantities, on tiny hand-checked values."""
import math

import pytest
import torch

from diffir.losses.diffloss_loss import DiffLoss
from diffir.schedules import ForwardDiffusion, ddpm_quantities, make_betas


def test_named_betas():
    torch.testing.assert_close(make_betas("linear", 3, 0.1, 0.3), torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64))
    # 'scaled_linear' is linear in sqrt(beta): sqrt betas 0.1, 0.2, 0.3
    torch.testing.assert_close(make_betas("scaled_linear", 3, 0.01, 0.09),
                               torch.tensor([0.01, 0.04, 0.09], dtype=torch.float64))
    assert make_betas("linear", 5, 1e-4, 0.02).dtype == torch.float64
    with pytest.raises(ValueError, match="must be one of"):
        make_betas("cosine", 3, 0.1, 0.3)
    with pytest.raises(ValueError, match="0 < beta_start <= beta_end < 1"):
        make_betas("linear", 3, 0.3, 0.1)


def test_ddpm_quantities_by_hand():
    q = ddpm_quantities(torch.tensor([0.5, 0.5], dtype=torch.float64))
    # alphas 0.5, 0.5: alpha-bar 0.5, 0.25; alpha-bar_prev 1, 0.5
    expected = {
        "alphas_cumprod": [0.5, 0.25], "alphas_cumprod_prev": [1.0, 0.5],
        "sqrt_alphas_cumprod": [math.sqrt(0.5), 0.5],
        "sqrt_one_minus_alphas_cumprod": [math.sqrt(0.5), math.sqrt(0.75)],
        "log_one_minus_alphas_cumprod": [math.log(0.5), math.log(0.75)],
        "sqrt_recip_alphas_cumprod": [math.sqrt(2), 2.0], "sqrt_recipm1_alphas_cumprod": [1.0, math.sqrt(3)],
        # beta (1 - abar_prev) / (1 - abar): 0 at t = 0, 0.5 * 0.5 / 0.75 at t = 1
        "posterior_variance": [0.0, 1 / 3], "posterior_log_variance_clipped": [math.log(1e-20), math.log(1 / 3)],
        # beta sqrt(abar_prev) / (1 - abar) and (1 - abar_prev) sqrt(alpha) / (1 - abar)
        "posterior_mean_coef1": [1.0, 0.5 * math.sqrt(0.5) / 0.75],
        "posterior_mean_coef2": [0.0, 0.5 * math.sqrt(0.5) / 0.75],
    }
    for name, values in expected.items():
        torch.testing.assert_close(q[name], torch.tensor(values, dtype=torch.float64), rtol=1e-12, atol=0,
                                   msg=name)


def test_forward_diffusion_noises_with_the_schedule_and_diffloss_uses_it():
    diffusion = ForwardDiffusion(num_timesteps=10, beta_start=0.01, beta_end=0.1)
    q = ddpm_quantities(make_betas("linear", 10, 0.01, 0.1))
    assert torch.equal(diffusion.sqrt_alphas_cumprod, q["sqrt_alphas_cumprod"].float())
    x0, noise, t = torch.ones(2, 1, 2, 2), torch.full((2, 1, 2, 2), 2.0), torch.tensor([0, 9])
    noised = diffusion.q_sample(x0, t, noise)
    for i in range(2):
        a, s = q["sqrt_alphas_cumprod"][t[i]].item(), q["sqrt_one_minus_alphas_cumprod"][t[i]].item()
        torch.testing.assert_close(noised[i], torch.full((1, 2, 2), a + 2 * s), rtol=1e-6, atol=0)
    loss = DiffLoss(prior_opt=dict(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1",
                                   attention_resolutions="", num_head_channels=-1, num_heads=1, learn_sigma=False),
                    allow_random_prior=True, num_timesteps=10, beta_start=0.01, beta_end=0.1, fit="none")
    assert torch.equal(loss.diffusion.sqrt_one_minus_alphas_cumprod, diffusion.sqrt_one_minus_alphas_cumprod)
