"""The model families (tvelib.archs.FAMILIES): each record says truthfully how its targets are
built, what features() returns, how big z is, and how the network splits into stages."""
import pytest
import torch

from tvelib import archs, training, trunks


@pytest.mark.parametrize("name", list(archs.FAMILIES))
def test_family_record_describes_its_targets(name):
    fam = archs.family(name)
    torch.manual_seed(0)
    target = archs.build_target(name, "tiny", 5).eval()
    assert archs.family_of(target) is fam and isinstance(target, fam.wrapper)
    size = archs.CONFIGS[name]["tiny"].get("image_size", 32)
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        z, f = target.embed(x), target.features(x)
        assert z.shape == (2, fam.embedding_dim(target))
        if fam.features_layout == "tokens":
            assert f.dim() == 3 and f.shape[2] == z.shape[1]  # [B,1+N,D]
        else:
            assert f.dim() == 4 and f.shape[1] == z.shape[1]  # [B,D,h,w]
        assert torch.allclose(target.classify(f), target(x), atol=1e-5)
        if fam.stages is not None:  # the stages, then the final norm, give features()
            h = x
            for stage in fam.stages(target):
                h = stage(h)
            if fam.final_norm is not None:
                h = fam.final_norm(target)(h)
            if fam.channels_last:
                h = h.permute(0, 3, 1, 2)
            assert torch.allclose(h, f, atol=1e-5)


def test_unknown_family_is_named():
    with pytest.raises(ValueError, match="unknown architecture 'mlp'"):
        archs.family("mlp")
    with pytest.raises(TypeError, match="unknown target wrapper"):
        archs.family_of(torch.nn.Linear(2, 2))


@pytest.mark.parametrize("name", list(archs.FAMILIES))
def test_trunk_and_distillation_stage_agree_on_the_grid(name):
    """The explainer's trunk and distillation's grid stage are the same split of the network."""
    torch.manual_seed(0)
    target = archs.build_target(name, "small", 5, image_size=112).eval()
    x = torch.randn(2, 3, 112, 112)
    trunk, to_map, rest = trunks.encoder_trunk(target, 14, 112)
    with torch.no_grad():
        stage, logits = training.grid_stage_and_logits(target, x)
        assert torch.allclose(to_map(trunk(x)), stage, atol=1e-5)
        assert torch.allclose(logits, target(x), atol=1e-4)
        assert torch.allclose(rest(trunk(x)), target.embed(x), atol=1e-4, rtol=1e-3)
