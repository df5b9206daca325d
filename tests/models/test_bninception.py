"""BN-Inception: architecture/key layout of the converted Caffe weights, loading, errors."""
from __future__ import annotations

import hashlib

import pytest
import torch

from gspdml.errors import CheckpointError, ConfigError
from gspdml.models import build_backbone
from gspdml.models.bninception import KEY_COUNT, WEIGHTS_FILE_NAME, BNInception, load_bninception_weights

# Keys and shapes of the real bn_inception-52deb4733.pth (Cadene's pretrainedmodels layout).
KNOWN_KEYS = {
    "conv1_7x7_s2.weight": (64, 3, 7, 7),
    "conv1_7x7_s2.bias": (64,),
    "conv1_7x7_s2_bn.running_mean": (64,),
    "conv2_3x3_reduce.weight": (64, 64, 1, 1),
    "conv2_3x3.weight": (192, 64, 3, 3),
    "inception_3a_1x1.weight": (64, 192, 1, 1),
    "inception_3a_double_3x3_reduce.weight": (64, 192, 1, 1),
    "inception_3a_double_3x3_1.weight": (96, 64, 3, 3),
    "inception_3a_pool_proj.weight": (32, 192, 1, 1),
    "inception_3c_3x3.weight": (160, 128, 3, 3),
    "inception_4a_1x1.weight": (224, 576, 1, 1),
    "inception_4d_double_3x3_reduce.weight": (160, 608, 1, 1),
    "inception_4e_double_3x3_2_bn.running_var": (256,),
    "inception_5a_3x3_reduce.weight": (192, 1056, 1, 1),
    "inception_5b_1x1.weight": (352, 1024, 1, 1),
    "inception_5b_pool_proj_bn.bias": (128,),
    "inception_5b_pool_proj_bn.running_var": (128,),
    "last_linear.weight": (1000, 1024),
    "last_linear.bias": (1000,),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return BNInception().eval()


def _real_layout(model):
    """The state dict as in the converted file: no num_batches_tracked buffers."""
    return {k: v.clone() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_key_layout_matches_the_converted_weights(model):
    state = _real_layout(model)
    assert len(state) == KEY_COUNT == 416
    for key, shape in KNOWN_KEYS.items():
        assert key in state, key
        assert tuple(state[key].shape) == shape, key
    # every conv has a bias and a BN with 4 tensors
    convs = [k[: -len(".weight")] for k, v in state.items() if k.endswith(".weight") and v.dim() == 4]
    assert len(convs) == 69
    for c in convs:
        for suffix in (".bias", "_bn.weight", "_bn.bias", "_bn.running_mean", "_bn.running_var"):
            assert c + suffix in state


def test_output_channels_and_stride(model):
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
        assert out.shape == (2, 1024, 2, 2)
        assert model(torch.randn(1, 3, 96, 96)).shape == (1, 1024, 3, 3)
    assert model.out_channels == 1024 and model.input_kind == "image"
    assert tuple(model.mean) == (104.0, 117.0, 128.0) and model.input_space == "BGR"


def test_load_real_layout_file(model, tmp_path):
    path = tmp_path / WEIGHTS_FILE_NAME
    state = _real_layout(model)
    for k, v in state.items():  # make the file differ from any fresh random init
        if v.is_floating_point():
            v.add_(torch.rand_like(v) * 0.01)
    # the published file stores BatchNorm vectors as (1, C) (old PyTorch copied them by
    # broadcasting); current PyTorch needs (C,), so the loader must reshape them
    saved = {k: (v.unsqueeze(0) if "_bn." in k else v) for k, v in state.items()}
    torch.save(saved, path)
    other = build_backbone("bninception").eval()
    assert not torch.equal(other.conv1_7x7_s2.weight, model.conv1_7x7_s2.weight)
    digest = load_bninception_weights(other, path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    for k, v in state.items():
        assert torch.equal(other.state_dict()[k], v), k
    # through the registry, with a DataParallel prefix and a different classifier size
    prefixed = {"module." + k: v for k, v in state.items() if not k.startswith("last_linear")}
    prefixed["module.last_linear.weight"] = torch.zeros(10, 1024)
    prefixed["module.last_linear.bias"] = torch.zeros(10)
    torch.save({"state_dict": prefixed}, tmp_path / "wrapped.pth")
    third = build_backbone("bninception", pretrained=str(tmp_path / "wrapped.pth"))
    assert torch.equal(third.inception_5b_1x1.weight, state["inception_5b_1x1.weight"])


def test_load_errors(model, tmp_path):
    state = _real_layout(model)
    del state["inception_4c_3x3.weight"]
    state["inception_9z_1x1.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=r"missing keys .*inception_4c_3x3.weight.*unexpected keys .*inception_9z_1x1"):
        load_bninception_weights(model, tmp_path / "bad.pth")
    state = _real_layout(model)
    state["conv1_7x7_s2.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match=r"conv1_7x7_s2.weight: file \(64, 3, 5, 5\)"):
        load_bninception_weights(model, tmp_path / "shape.pth")
    with pytest.raises(ConfigError, match="does not exist"):
        load_bninception_weights(model, tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_bninception_weights(model, tmp_path / "garbage.pth")
    with pytest.raises(ConfigError, match="download"):
        build_backbone("bninception", pretrained=True)
