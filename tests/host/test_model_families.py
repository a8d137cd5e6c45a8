"""Every supported family on ComfyUI's real classes: the backend's eps equals the textbook conversion of the raw
UNet output (EPS and v-prediction), and SD2.x (OpenCLIP-H, v-prediction) and the SDXL refiner (clip_g only,
aesthetic-score ADM) learn like SD1.5 (SDXL base: test_sdxl.py)."""
import pytest
import torch

pytest.importorskip("comfy_api")


def _family(name, loaded):
    from continual_concepts.bench import comfy_slim_models as slim

    if name == "sd15":
        return loaded
    with torch.inference_mode():
        model, clip = getattr(slim, f"build_slim_{name}")()
    return model, clip, loaded[2]


@pytest.mark.parametrize("name", ["sd15", "sd21_v", "sdxl", "sdxl_refiner"])
def test_predict_eps_matches_the_raw_unet(name, loaded):
    """x_t = sqrt(abar) x0 + sqrt(1 - abar) eps. An EPS UNet fed x_t and t returns eps; a v UNet returns
    v = sqrt(abar) eps - sqrt(1 - abar) x0, so eps = sqrt(abar) v + sqrt(1 - abar) x_t. The backend goes through
    ComfyUI's sigma space and apply_model instead; both must agree."""
    import comfy.model_base

    from continual_concepts.core.backends.comfy_backend import ComfyBackend

    model, clip, vae = _family(name, loaded)
    with torch.inference_mode(False), torch.no_grad():
        b = ComfyBackend(model.clone(), clip.clone(), vae)
        ctx = b.encode_text(["a photo of sks", "a dog"])
        g = torch.Generator().manual_seed(0)
        x_t = torch.randn(2, 4, 8, 8, generator=g)
        t = torch.tensor([100, 700])
        got = b.predict_eps(x_t, t, ctx)
        base = model.model
        extra = {}
        if b._adm:
            pooled = ctx[:, -1, :1280]
            extra["y"] = base.encode_adm(pooled_output=pooled, width=64, height=64, device="cpu")
        raw = base.diffusion_model(x_t, t.float(), context=b.text_context(ctx), **extra).float()
        abar = b.alphas_cumprod[t].view(-1, 1, 1, 1)
        if base.model_type == comfy.model_base.ModelType.V_PREDICTION:
            want = abar.sqrt() * raw + (1 - abar).sqrt() * x_t
        else:
            assert base.model_type == comfy.model_base.ModelType.EPS
            want = raw
    assert (name == "sd21_v") == (base.model_type == comfy.model_base.ModelType.V_PREDICTION)
    err = (got - want).abs().max() / want.abs().max()
    assert err < 1e-3, f"{name}: relative error {err:.2e}"


@pytest.mark.parametrize("name,encoders,width", [("sd21_v", ["clip_h"], 1024), ("sdxl_refiner", ["clip_g"], 1280)])
def test_single_encoder_families_learn_rows_and_their_token(name, encoders, width, loaded, teach):
    m, clip, vae = _family(name, loaded)
    out = teach(m, clip, vae, budget_pct=1.0)
    assert out["m2"].patches and all(k.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for k in out["m2"].patches)
    assert out["mem"].concepts[0].token.shape == (width,)
    assert [k.split(".")[0] for k in out["c2"].patcher.patches] == encoders
    assert not m.patches and not clip.patcher.patches
