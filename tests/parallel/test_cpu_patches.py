"""Each CPU patch checked through the behaviour it enables (one gloo rank in this process).

The PP=2 path of patch_tensor_cuda_calls (tied embeddings synced over the embedding group) and
the P2P buffers of patch_current_device run for real in test_pipeline.py, the shape exchange of
patch_p2p_shape_sync in test_schedule.py, recompute (patch_checkpoint_rng) in tests/models.
"""

from __future__ import annotations

import pytest
import torch

from megatron_codistill.parallel import cpu_patches
from tests.parallel._util import randomize_, reference_logprobs, tiny_arch

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CPU patches apply only without CUDA")


def _model(layouts, **arch_changes):
    from megatron_codistill.models.provider import build_gpt_model

    large, _ = layouts
    model = build_gpt_model(tiny_arch(**arch_changes), pg_collection=large.pg_collection, pre_process=True,
                            post_process=True)
    randomize_(model)
    return model


def _run_in_module(module_name: str, code: str, **names):
    """Run `code` as if written in module `module_name` (the patches look at the caller's module)."""
    scope = {"__name__": module_name, **names}
    exec(code, scope)
    return scope


def test_all_patches_applied_once(layouts):
    assert cpu_patches.applied() == frozenset(cpu_patches.PATCHES)
    type_fn, cuda_fn, device_fn = torch.Tensor.type, torch.Tensor.cuda, torch.cuda.current_device
    cpu_patches.apply_cpu_patches()  # idempotent: nothing is wrapped twice
    assert (torch.Tensor.type, torch.Tensor.cuda, torch.cuda.current_device) == (type_fn, cuda_fn, device_fn)
    assert not hasattr(torch.Tensor.type.__wrapped__, "__wrapped__")  # wrapped exactly once


def test_current_device_lets_rope_build_its_table(layouts):
    from megatron.core.models.common.embeddings.rotary_pos_embedding import RotaryEmbedding

    rope = RotaryEmbedding(kv_channels=8, rotary_percent=1.0, rotary_base=100, use_cpu_initialization=True)
    table = rope(6)  # [T, 1, 1, d]: angle t * base^(-2i/d), halves repeated
    inv_freq = 100.0 ** (-torch.arange(0, 8, 2, dtype=torch.float32) / 8)
    angles = torch.arange(6, dtype=torch.float32)[:, None] * inv_freq[None]
    expected = torch.cat([angles, angles], dim=-1)
    assert table.device.type == "cpu"
    torch.testing.assert_close(table.reshape(6, 8), expected)


def test_rng_fork_draws_from_the_cpu_generator(layouts):
    from megatron.core.tensor_parallel import get_cuda_rng_tracker

    torch.manual_seed(7)
    with get_cuda_rng_tracker().fork():
        inside = torch.rand(4)
    torch.manual_seed(7)
    assert torch.equal(inside, torch.rand(4))


def test_checkpoint_recompute_replays_the_cpu_random_stream(layouts):
    from megatron.core.tensor_parallel import checkpoint

    def noisy(x):  # a random draw inside the checkpointed function, as dropout would make
        return x * torch.rand(x.shape)

    x = torch.ones(5, requires_grad=True)
    torch.manual_seed(3)
    out = checkpoint(noisy, False, x)
    after_forward = torch.get_rng_state()
    out.sum().backward()  # recomputes noisy(x): the same draw, so grad == the forward's noise
    torch.testing.assert_close(x.grad, out.detach())
    assert torch.equal(torch.get_rng_state(), after_forward)  # the replay leaves the stream where it was


def test_p2p_shape_exchange_skips_cuda_synchronize(layouts):
    from megatron.core.pipeline_parallel import p2p_communication

    assert p2p_communication.torch.cuda.synchronize() is None
    assert p2p_communication.torch.zeros(2, device="cuda").device.type == "cpu"  # still a CPU stand-in


def test_default_causal_mask_equals_explicit_mask_and_is_causal(layouts):
    model = _model(layouts)
    tokens = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(12).unsqueeze(0).expand(2, 12)
    explicit = torch.triu(torch.ones(1, 1, 12, 12, dtype=torch.bool), diagonal=1)
    with torch.no_grad():
        default = model(tokens, pos, None)
        masked = model(tokens, pos, explicit)
        changed = tokens.clone()
        changed[:, 8] = (changed[:, 8] + 1) % 300
        after = model(changed, pos, None)
    torch.testing.assert_close(default, masked)
    torch.testing.assert_close(after[:, :8], default[:, :8])  # earlier positions never see token 8
    assert (after[:, 8:] - default[:, 8:]).abs().max() > 1e-3


def test_schedule_runs_forward_only_on_cpu(layouts):
    from megatron_codistill.parallel.logprobs import forward_logprobs

    large, _ = layouts
    model = _model(layouts)
    tokens = torch.randint(0, 300, (3, 10), generator=torch.Generator().manual_seed(2))
    logp = forward_logprobs(model, large, tokens, micro_batch_size=2)
    with torch.no_grad():
        expected, _ = reference_logprobs(model, tokens, 300)
    torch.testing.assert_close(logp, expected, atol=1e-5, rtol=0)


def test_grad_l2_norm_and_optimizer_tensors_on_cpu(layouts):
    from megatron.core.optimizer.clip_grads import get_grad_norm_fp32

    large, _ = layouts
    grads = [torch.randn(5, 3), torch.randn(7)]
    norm = get_grad_norm_fp32(grads, grad_stats_parallel_group=large.pg_collection.mp)
    assert norm == pytest.approx(torch.cat([g.flatten() for g in grads]).norm().item(), rel=1e-6)


def test_tensor_type_reports_cuda_only_to_megatron_optimizer(layouts):
    from megatron.core.optimizer.clip_grads import clip_grad_by_total_norm_fp32

    t = torch.zeros(2)
    assert t.type() == "torch.FloatTensor"
    scope = _run_in_module("megatron.core.optimizer.fake", "kind = t.type()", t=t)
    assert scope["kind"] == "torch.cuda.FloatTensor"
    # the assert inside clip_grad_by_total_norm_fp32 passes and the grads are scaled by 2 / 8
    p = torch.nn.Parameter(torch.ones(4))
    p.grad = torch.full((4,), 4.0)
    clip_grad_by_total_norm_fp32([p], max_norm=2.0, total_norm=8.0)
    torch.testing.assert_close(p.grad, torch.full((4,), 4.0 * 2.0 / (8.0 + 1e-6)))


def test_tensor_cuda_is_identity_only_for_megatron_callers(layouts):
    t = torch.ones(3)
    scope = _run_in_module("megatron.core.models.fake", "moved = t.cuda()", t=t)
    assert scope["moved"] is t
    with pytest.raises((AssertionError, RuntimeError)):
        t.cuda()


def test_megatron_optimizer_step_matches_torch_adamw(layouts):
    """FP32Optimizer and DistributedOptimizer (type-sorted param groups) with clipping on CPU."""
    from megatron_codistill.parallel.optimizer import build_optimizer
    from megatron_codistill.parallel.train_step import train_step

    large, _ = layouts
    tokens = torch.randint(0, 300, (4, 8), generator=torch.Generator().manual_seed(3))

    def loss_fn(logp, entropy, rows):
        return -logp.sum() / tokens[:, 1:].numel(), {}

    for distributed in (False, True):
        model, ref = _model(layouts), _model(layouts)
        ddp, opt, _ = build_optimizer(model, large, lr=1e-2, adam_eps=1e-3, clip_grad=0.5,
                                      use_distributed_optimizer=distributed)
        out = train_step(ddp, opt, large, tokens, loss_fn, micro_batch_size=4)
        ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, eps=1e-3, weight_decay=0.0)
        logp, _ = reference_logprobs(ref, tokens, 300)
        (-logp.sum() / tokens[:, 1:].numel()).backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 0.5).item()
        ref_opt.step()
        assert norm > 0.5
        assert out["grad_norm"] == pytest.approx(norm, rel=1e-5)
        diff = max((p - q).abs().max().item() for p, q in zip(model.parameters(), ref.parameters()))
        assert diff <= 1e-6, (distributed, diff)
