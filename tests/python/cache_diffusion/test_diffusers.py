"""mtc.cachify on diffusers denoisers built from small configs (random weights: API behaviour
only, never quality) and on a diffusers pipeline."""

from __future__ import annotations

import copy

import pytest
import torch

import mopt.cache_diffusion as mtc

diffusers = pytest.importorskip("diffusers")


def _unet():
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=16, in_channels=1, out_channels=1, layers_per_block=1,
        block_out_channels=(8, 16, 16), norm_num_groups=4,
        down_block_types=("DownBlock2D",) * 3, up_block_types=("UpBlock2D",) * 3).eval()


def test_unet_with_sdxl_default_config():
    unet = _unet()
    ref = copy.deepcopy(unet)
    layout, blocks = mtc.cachify.block_layout(unet)
    assert layout == "unet" and "up_blocks.2" in blocks and "mid_block" in blocks
    mtc.cachify.prepare(unet, mtc.SDXL_DEFAULT_CONFIG)
    assert "up_blocks.2" not in mtc.cachify.cached_blocks(unet)
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad(), mtc.cachify.infer(unet):
        outs = [unet(x * (1 + 0.1 * i), 999 - 10 * i).sample for i in range(4)]
    with torch.no_grad():
        refs = [ref(x * (1 + 0.1 * i), 999 - 10 * i).sample for i in range(4)]
    assert torch.equal(outs[0], refs[0]) and torch.equal(outs[2], refs[2])
    assert not torch.equal(outs[1], refs[1])
    # infer() reset the counters on exit
    assert all(s["calls"] == 0 for s in mtc.cachify.stats(unet).values())


def test_dit_and_sd3_layouts_and_their_defaults():
    torch.manual_seed(0)
    dit = diffusers.DiTTransformer2DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
        num_layers=24, sample_size=8, patch_size=2, norm_num_groups=2,
        num_embeds_ada_norm=1000).eval()
    assert mtc.cachify.block_layout(dit)[0] == "dit"
    mtc.cachify.prepare(dit, mtc.PIXART_DEFAULT_CONFIG)
    cached = mtc.cachify.cached_blocks(dit)
    assert "transformer_blocks.20" in cached and "transformer_blocks.21" not in cached
    assert "transformer_blocks.2" in cached  # "2" is not "2x"
    x = torch.randn(1, 4, 8, 8)
    labels = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        for step in range(3):
            dit(x, timestep=torch.tensor([999 - step]), class_labels=labels)
    assert mtc.cachify.stats(dit)["transformer_blocks.0"] == {"calls": 3, "recomputes": 1,
                                                               "reuses": 2}
    sd3 = diffusers.SD3Transformer2DModel(
        sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=16, caption_projection_dim=16,
        pooled_projection_dim=8, out_channels=4, pos_embed_max_size=16).eval()
    assert mtc.cachify.block_layout(sd3)[0] == "sd3"
    with pytest.raises(ValueError, match="'dit' block layout"):
        mtc.cachify.prepare(sd3, mtc.PIXART_DEFAULT_CONFIG)
    mtc.cachify.prepare(sd3, mtc.SD3_DEFAULT_CONFIG)
    args = dict(hidden_states=torch.randn(1, 4, 8, 8), encoder_hidden_states=torch.randn(1, 3, 16),
                pooled_projections=torch.randn(1, 8))
    with torch.no_grad():
        a = sd3(**args, timestep=torch.tensor([999])).sample
        b = sd3(**args, timestep=torch.tensor([990])).sample  # joint blocks reuse (odd step)
    assert a.shape == b.shape
    assert mtc.cachify.stats(sd3)["transformer_blocks.1"]["reuses"] == 1


def test_diffusers_pipeline_resets_each_call():
    unet = _unet()
    pipe = diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler(
        num_train_timesteps=100))
    pipe.set_progress_bar_config(disable=True)
    mtc.cachify.prepare(pipe, mtc.SDXL_DEFAULT_CONFIG)
    for _ in range(2):
        pipe(batch_size=1, num_inference_steps=6, output_type="np")
        assert mtc.cachify.stats(pipe)["down_blocks.0"] == {"calls": 6, "recomputes": 3,
                                                            "reuses": 3}
    # the pipeline keeps its class name (save_pretrained writes it) and can be un-cached
    assert type(pipe).__name__ == "DDPMPipeline"
    mtc.cachify.remove(pipe)
    assert type(pipe) is diffusers.DDPMPipeline
