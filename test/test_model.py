"""LeWM modules: shapes, AdaLN-zero start, causality, the KV prefix and gradient paths."""

import pytest
import torch
import torch.nn.functional as F

from lewm_ros.model import LeWM, ModelConfig, resize_pixels


def micro_config(**overrides) -> ModelConfig:
    return ModelConfig.from_preset('micro', action_dim=2, frameskip=5, **overrides)


def make_model(seed: int = 0, **overrides) -> LeWM:
    torch.manual_seed(seed)
    return LeWM(micro_config(**overrides), action_mean=[0.5, -1.0], action_std=[2.0, 0.5])


def clip(batch: int = 4, seed: int = 0, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (batch, 4, size, size, 3), dtype=torch.uint8, generator=gen)
    actions = torch.randn(batch, 3, 10, generator=gen)
    return pixels, actions


def test_paper_preset_has_about_18m_parameters():
    cfg = ModelConfig.from_preset('paper', action_dim=2)
    assert (cfg.image_size, cfg.patch_size, cfg.encoder_width, cfg.encoder_depth) == (224, 14, 192, 12)
    assert (cfg.predictor_depth, cfg.predictor_heads, cfg.history, cfg.frameskip) == (6, 16, 3, 5)
    assert 17.5e6 < LeWM(cfg).num_parameters() < 18.5e6


def test_forward_shapes_and_input_checks():
    model = make_model().eval()
    pixels, actions = clip()
    z, z_pred = model(pixels, actions)
    assert z.shape == (4, 4, 16) and z_pred.shape == (4, 3, 16)
    assert model.embed_actions(actions).shape == (4, 3, 16)
    with pytest.raises(TypeError, match='uint8'):
        model.encode(pixels.float())
    with pytest.raises(ValueError, match='channels last'):
        model.encode(pixels.permute(0, 1, 4, 2, 3))
    with pytest.raises(ValueError, match='resize'):
        model.encode(clip(size=64)[0])
    with pytest.raises(ValueError, match='frameskip'):
        model.embed_actions(torch.randn(4, 3, 7))
    with pytest.raises(ValueError, match='history'):
        model.predict(torch.randn(1, 4, 16), torch.randn(1, 4, 16))


def test_resize_pixels_gives_the_model_size():
    frames = clip(size=64)[0]
    small = resize_pixels(frames, 32)
    assert small.shape == (4, 4, 32, 32, 3) and small.dtype == torch.uint8
    assert make_model().eval().encode(small).shape == (4, 4, 16)


def test_cls_shortcut_in_last_block_equals_full_block():
    model = make_model().eval()
    block = model.encoder.blocks[-1]
    x = torch.randn(3, 17, 48)
    torch.testing.assert_close(block.forward_first_token(x), block(x)[:, :1], rtol=1e-5, atol=1e-6)


def test_predictor_ignores_actions_at_init_and_learns_to_use_them():
    model = make_model()
    pixels, actions = clip()
    other = torch.randn_like(actions)
    model.eval()
    with torch.no_grad():
        z = model.encode(pixels)[:, :3]
        assert torch.equal(
            model.predict(z, model.embed_actions(actions)), model.predict(z, model.embed_actions(other))
        )
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        z_all, z_pred = model(pixels, actions)
        loss = F.mse_loss(z_pred, z_all[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        z = model.encode(pixels)[:, :3]
        changed = model.predict(z, model.embed_actions(actions)) - model.predict(
            z, model.embed_actions(other)
        )
    assert changed.abs().max() > 1e-4


def with_active_conditioning() -> LeWM:
    """A model whose AdaLN-zero layers are no longer zero, so every path of the predictor is active."""
    model = make_model()
    gen = torch.Generator().manual_seed(9)
    with torch.no_grad():
        for block in model.predictor.blocks:
            block.ada.weight.copy_(torch.randn(block.ada.weight.shape, generator=gen) * 0.3)
            block.ada.bias.copy_(torch.randn(block.ada.bias.shape, generator=gen) * 0.3)
    return model.eval()


def test_predictor_is_causal():
    model = with_active_conditioning()
    gen = torch.Generator().manual_seed(1)
    z, cond = torch.randn(2, 3, 16, generator=gen), torch.randn(2, 3, 16, generator=gen)
    with torch.no_grad():
        base = model.predict(z, cond)
        z2, cond2 = z.clone(), cond.clone()
        # random perturbations: a constant shift would be erased by the LayerNorms
        z2[:, 2] += torch.randn(16, generator=gen)
        cond2[:, 2] += torch.randn(16, generator=gen)
        changed = model.predict(z2, cond2)
        z3 = z.clone()
        z3[:, 0] += torch.randn(16, generator=gen)
        earlier = model.predict(z3, cond)
    torch.testing.assert_close(changed[:, :2], base[:, :2], rtol=0, atol=1e-6)
    assert (changed[:, 2] - base[:, 2]).abs().max() > 1e-3
    assert (earlier[:, 1:] - base[:, 1:]).abs().max() > 1e-3  # and later tokens do see earlier ones


def test_kv_prefix_plus_suffix_equals_full_forward():
    model = with_active_conditioning()
    gen = torch.Generator().manual_seed(2)
    z_hist, cond_hist = torch.randn(1, 2, 16, generator=gen), torch.randn(1, 2, 16, generator=gen)
    z_new, cond_new = torch.randn(5, 1, 16, generator=gen), torch.randn(5, 1, 16, generator=gen)
    with torch.no_grad():
        full = model.predictor(
            torch.cat([z_hist.expand(5, -1, -1), z_new], 1),
            torch.cat([cond_hist.expand(5, -1, -1), cond_new], 1),
        )
        head, prefix = model.predictor(z_hist, cond_hist, return_prefix=True)
        tail = model.predictor(z_new, cond_new, prefix=prefix, start_pos=2)
        # one token at a time, each step extending the cache, gives the same numbers too
        _, p1 = model.predictor(z_hist[:, :1], cond_hist[:, :1], return_prefix=True)
        second, p2 = model.predictor(
            z_hist[:, 1:], cond_hist[:, 1:], prefix=p1, start_pos=1, return_prefix=True
        )
    torch.testing.assert_close(head.expand(5, -1, -1), full[:, :2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tail, full[:, 2:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, head[:, 1:], rtol=1e-5, atol=1e-5)
    assert len(p2) == 2 and p2[0][0].shape == (1, 2, 2, 16)
    with pytest.raises(ValueError, match='start_pos'):
        model.predictor(z_new, cond_new, prefix=prefix, start_pos=1)


def test_gradients_reach_the_encoder_through_the_targets():
    model = make_model().train()
    pixels, actions = clip()
    z, z_pred = model(pixels, actions)
    F.mse_loss(z_pred.detach(), z[:, 1:]).backward()  # only the target path carries gradient
    grad = model.encoder.patch_embed.proj.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_action_normalisation_round_trip_single_and_concatenated():
    model = make_model()
    a = torch.tensor([[2.5, -0.5]])
    torch.testing.assert_close(model.normalize_actions(a), torch.tensor([[1.0, 1.0]]))
    block = torch.randn(7, 3, 10)
    torch.testing.assert_close(model.denormalize_actions(model.normalize_actions(block)), block)
    torch.testing.assert_close(
        model.normalize_actions(block)[..., 2:4], model.normalize_actions(block[..., 2:4])
    )
    with pytest.raises(ValueError, match='multiple of action_dim'):
        model.normalize_actions(torch.randn(3))


def test_bf16_autocast_forward_and_backward_on_cpu():
    """Under bf16 autocast (the CPU attention path included) outputs, loss and gradients stay fp32's."""
    import contextlib
    import copy

    from lewm_ros.model.attention import Attention

    start = with_active_conditioning().train()  # every path of the predictor active
    with torch.no_grad():  # larger logits: attention far from uniform, so its arithmetic matters
        for module in start.modules():
            if isinstance(module, Attention):
                module.qkv.weight.mul_(3.0)
    pixels, actions = clip()
    runs = {}
    for precision in ('fp32', 'bf16'):
        model = copy.deepcopy(start)
        bf16 = precision == 'bf16'
        with torch.autocast('cpu', dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            z, z_pred = model(pixels, actions)
            loss = F.mse_loss(z_pred.float(), z[:, 1:].float())
        assert z.dtype == (torch.bfloat16 if bf16 else torch.float32)  # autocast did take effect
        loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])
        runs[precision] = (loss.detach(), z.detach().float(), z_pred.detach().float(), grad)

    def relative_error(i: int) -> float:
        return float((runs['bf16'][i] - runs['fp32'][i]).norm() / runs['fp32'][i].norm())

    # bf16 keeps 8 bits of mantissa: here the loss is 0.01 % off, embeddings 1-2 %, gradients 4 %;
    # attention without its 1/sqrt(d) scale puts them 3 %, 50 %, 60 % and 100 % off
    assert relative_error(0) < 0.005, relative_error(0)
    assert relative_error(1) < 0.05 and relative_error(2) < 0.05, (relative_error(1), relative_error(2))
    assert torch.isfinite(runs['bf16'][3]).all() and relative_error(3) < 0.1, relative_error(3)


def test_invalid_config_is_reported():
    with pytest.raises(ValueError, match='multiple of patch_size'):
        ModelConfig(image_size=30, patch_size=8)
    with pytest.raises(ValueError, match='unknown model config'):
        ModelConfig.from_dict({'image_sise': 64})
    with pytest.raises(FileNotFoundError, match='available'):
        ModelConfig.from_preset('no-such-preset')


@pytest.mark.parametrize('masking', ['none', 'causal', 'prefix'])
def test_bf16_cpu_attention_matches_sdpa(masking):
    from lewm_ros.model.attention import attend

    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 5, 16, generator=gen)
    k, v = torch.randn(2, 3, 7, 16, generator=gen), torch.randn(2, 3, 7, 16, generator=gen)
    mask = torch.ones(5, 7, dtype=torch.bool).tril(2) if masking == 'prefix' else None
    if masking == 'causal':
        k, v = k[:, :, :5], v[:, :, :5]
    reference = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=masking == 'causal')
    fast = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask, is_causal=masking == 'causal')
    assert fast.dtype == torch.bfloat16
    torch.testing.assert_close(fast.float(), reference, rtol=0.03, atol=0.03)
