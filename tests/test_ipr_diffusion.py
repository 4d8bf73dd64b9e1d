"""The IPR diffusion maths on tiny tensors against the official schedule values (paper-facts §1.5)."""
import torch

from diffir.archs import IPRDenoiser, IPRDiffusion
from diffir.schedules import ddpm_quantities, make_betas


def test_linear_schedule_is_linear_in_sqrt_beta():
    s = ddpm_quantities(make_betas("scaled_linear", 4, 0.1, 0.99))
    torch.testing.assert_close(s["betas"], torch.tensor([0.1, 0.294286, 0.590952, 0.99], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(s["alphas_cumprod"], torch.tensor([0.9, 0.635143, 0.259804, 0.002598],
                                                                 dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s["posterior_mean_coef1"], torch.tensor([1.0, 0.765187, 0.636270, 0.505927],
                                                                       dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s["posterior_mean_coef2"], torch.tensor([0.0, 0.230246, 0.315256, 0.074212],
                                                                       dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s["posterior_variance"], torch.tensor([0.0, 0.080658, 0.291292, 0.734703],
                                                                     dtype=torch.float64), atol=1e-6, rtol=0)


class ConstantCondition(torch.nn.Module):
    def forward(self, lq):
        return lq.flatten(1)[:, :1].expand(-1, 256).contiguous()


def test_buffers_are_the_float64_schedule_stored_in_float32():
    diffusion = IPRDiffusion(IPRDenoiser(), ConstantCondition(), linear_start=0.1, linear_end=0.99, timesteps=4)
    for name, value in ddpm_quantities(make_betas("scaled_linear", 4, 0.1, 0.99)).items():
        assert torch.equal(getattr(diffusion, name), value.float()), name


def make_diffusion():
    torch.manual_seed(0)
    return IPRDiffusion(IPRDenoiser(n_denoise_res=1, timesteps=4), ConstantCondition()).double()


def test_denoiser_input_is_condition_time_then_state():
    denoiser = IPRDenoiser(timesteps=4).double()
    seen = []
    denoiser.resmlp[0].register_forward_hook(lambda m, args, out: seen.append(args[0]))
    cond, x = torch.full((2, 256), 5.0, dtype=torch.float64), torch.full((2, 256), -3.0, dtype=torch.float64)
    denoiser(x, torch.tensor([3, 1]), cond)
    inp = seen[0]
    assert inp.shape == (2, 513)
    assert torch.all(inp[:, :256] == 5.0) and torch.all(inp[:, 257:] == -3.0)
    assert inp[0, 256].item() == torch.tensor(3 / 40, dtype=torch.float32).item()  # t / (10 T), in float32
    assert inp[1, 256].item() == torch.tensor(1 / 40, dtype=torch.float32).item()


def test_reverse_step_is_posterior_mean_and_last_step_is_x0_prediction():
    diffusion = make_diffusion()
    cond = torch.rand(3, 256, dtype=torch.float64)
    x_t = torch.randn(3, 256, dtype=torch.float64)
    for t in range(4):
        x0 = diffusion.model(x_t, torch.full((3,), t), cond)
        expected = diffusion.posterior_mean_coef1[t] * x0 + diffusion.posterior_mean_coef2[t] * x_t
        assert torch.equal(diffusion.p_step(x_t, t, cond), expected)
    assert torch.equal(diffusion.p_step(x_t, 0, cond), diffusion.model(x_t, torch.zeros(3, dtype=torch.long), cond))


def test_training_starts_from_noised_stage_one_ipr_and_returns_every_step():
    diffusion = make_diffusion().train()
    lq = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    ipr_s1, noise = torch.rand(2, 256, dtype=torch.float64), torch.randn(2, 256, dtype=torch.float64)
    first_inputs = []
    diffusion.model.register_forward_hook(lambda m, args, out: first_inputs.append(args[0]))
    ipr, iprs = diffusion(lq, ipr_s1, noise=noise)
    start = diffusion.sqrt_alphas_cumprod[3] * ipr_s1 + diffusion.sqrt_one_minus_alphas_cumprod[3] * noise
    assert torch.equal(first_inputs[0], start)
    assert len(iprs) == 4 and ipr is iprs[-1]
    assert abs(diffusion.sqrt_alphas_cumprod[3].item() - 0.050971) < 1e-6


def test_inference_draws_one_gaussian_vector_per_sample_first():
    diffusion = make_diffusion().eval()
    lq = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    torch.manual_seed(3)
    expected_noise = torch.randn(2, 256)
    first_inputs = []
    diffusion.model.register_forward_hook(lambda m, args, out: first_inputs.append(args[0]))
    torch.manual_seed(3)
    seeded = diffusion(lq)
    assert torch.equal(first_inputs[0], expected_noise.double())
    assert torch.equal(diffusion(lq, noise=expected_noise), seeded)
