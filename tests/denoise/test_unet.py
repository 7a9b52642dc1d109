"""The 3D U-Net: shapes, residual + standardisation, tiling, weights file round trip, plugin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from credgui.denoise.base import Denoiser, DenoiserInfo
from credgui.denoise.registry import available_denoisers, create_denoiser
from credgui.denoise.unet import (
    UNet3D,
    UNetDenoiser,
    count_parameters,
    load_unet_denoiser,
    read_model_file,
    save_model,
)
from credgui.errors import InputError


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(seed: int = 0, **config) -> UNet3D:
    torch.manual_seed(seed)
    model = UNet3D(**config)
    # non-trivial BN statistics, as a trained network has
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _denoiser(model: UNet3D, **kw) -> UNetDenoiser:
    return UNetDenoiser(model, DenoiserInfo(name="unet"), device="cpu", **kw)


def _volume(n: int, seed: int = 1, mean: float = 0.0, std: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, n, n)) * std + mean).astype(np.float32)


def _zero_noise_branch(model: UNet3D) -> UNet3D:
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def test_architecture_matches_paper():
    model = UNet3D()
    assert model.config["depth"] == 5 and model.config["channels"] == 4
    assert len(model.down) == 5 and len(model.up) == 5
    assert (
        sum(isinstance(m, torch.nn.AvgPool3d) for m in model.modules()) == 1
    )  # shared, used 5 times
    assert sum(isinstance(m, torch.nn.ConvTranspose3d) for m in model.modules()) == 5
    widths = [stage[-1][-1].out_channels for stage in model.down] + [
        model.bottom[-1][-1].out_channels
    ]
    assert widths == [4, 8, 16, 32, 64, 128]
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d) and m is not model.head]
    assert all(c.kernel_size == (3, 3, 3) and c.padding == (1, 1, 1) for c in convs)
    assert len(convs) == 2 * (5 + 1 + 5)  # two blocks per stage, down + bottom + up
    assert 1_000_000 < count_parameters(model) < 2_000_000


@pytest.mark.parametrize("box", [32, 40, 64])
def test_any_box_comes_back_same_shape(box):
    denoiser = _denoiser(_net())
    out = denoiser(_volume(box))
    assert out.shape == (box, box, box) and out.dtype == np.float32
    assert np.all(np.isfinite(out))


def test_network_refuses_sizes_off_the_grid():
    with pytest.raises(ValueError, match="multiples of 32"):
        UNet3D()(torch.zeros(1, 1, 40, 40, 40))


def test_zero_noise_branch_returns_input_exactly():
    denoiser = _denoiser(_zero_noise_branch(_net()))
    x = _volume(40, mean=3.0, std=2.5)
    out = denoiser(x)
    np.testing.assert_allclose(out, x, rtol=0, atol=2e-6 * np.abs(x).max())
    assert out.mean() == pytest.approx(x.mean(), abs=1e-5)
    assert out.std() == pytest.approx(x.std(), rel=1e-5)


def test_standardisation_is_undone_and_idempotent():
    """f(a x + b) = a f(x) + b for a > 0: the network sees the same standardised map."""
    denoiser = _denoiser(_net())
    x = _volume(32, seed=3)
    z = (x - x.mean()) / x.std()
    fz = denoiser(z)
    for a, b in ((1.0, 0.0), (7.5, -2.0), (0.01, 100.0)):
        np.testing.assert_allclose(
            denoiser(a * z + b), a * fz + b, rtol=0, atol=2e-5 * max(a, abs(b))
        )
    # standardised input: output is the network's own output, no rescaling
    np.testing.assert_allclose(fz, denoiser.denoise_standardised(z.astype(np.float32)), atol=1e-5)
    assert np.abs(fz - z).max() > 1e-3  # the noise branch did something


def test_constant_volume_is_returned_unchanged():
    x = np.full((32, 32, 32), 4.0, dtype=np.float32)
    np.testing.assert_array_equal(_denoiser(_net())(x), x)


def test_bad_input_is_refused():
    denoiser = _denoiser(_net())
    with pytest.raises(ValueError, match="3-D"):
        denoiser(np.zeros((32, 32), dtype=np.float32))
    x = _volume(32)
    x[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        denoiser(x)


def test_tiling_blend_is_a_partition_of_unity():
    """With a zero noise branch every tile returns its input: blending must return the volume."""
    model = _zero_noise_branch(_net(depth=2))
    x = _volume(50, mean=1.0)
    tiled = _denoiser(model, max_box=24, tile=24, overlap=8)
    assert tiled.tile == 24
    np.testing.assert_allclose(tiled(x), x, rtol=0, atol=1e-5)


def _tiling_error(
    model: UNet3D, x: np.ndarray, tile: int, overlap: int, margin: int = 8
) -> tuple[float, float]:
    """Relative rms difference (tiled vs whole) of the predicted noise away from the box edge.

    The box edge itself is left out: there the whole-volume path's padding to a multiple of
    2**depth and the tiled path's reflected halo legitimately differ.
    """
    whole = _denoiser(model, max_box=1000)(x)
    tiled = _denoiser(model, max_box=tile, tile=tile, overlap=overlap)(x)
    inner = (slice(margin, -margin),) * 3
    noise = (x - whole)[inner]
    noise -= noise.mean()
    diff = (whole - tiled)[inner]
    rel = float(np.sqrt(np.mean(diff**2)) / np.sqrt(np.mean(noise**2)))
    corr = float(np.corrcoef(noise.ravel(), (x - tiled)[inner].ravel())[0, 1])
    return rel, corr


def test_tiling_matches_whole_volume():
    model = _net(depth=3)
    x = _volume(60, seed=5)  # 60 + halo: tiles at irregular starts, the last one shifted back
    rel16, corr16 = _tiling_error(model, x, tile=32, overlap=16)
    rel8, _ = _tiling_error(model, x, tile=32, overlap=8)
    assert rel16 < 0.04 and corr16 > 0.999, (rel16, corr16)
    assert rel16 < 0.6 * rel8  # more overlap, less seam


def test_save_load_round_trip(tmp_path):
    model = _net(seed=4)
    meta = {
        "voxel_size": 1.5,
        "box": 96,
        "lambda_low_res": 10.0,
        "lambda_high_res": 4.5,
        "description": "round trip",
        "training": {"steps": 3, "loss": [1.0, 0.5]},
    }
    path = save_model(tmp_path / "sub" / "model.pt", model, meta)
    raw = torch.load(path, weights_only=True)
    assert (
        raw["config"] == model.config and raw["voxel_size"] == 1.5 and raw["training"]["steps"] == 3
    )
    assert not list(path.parent.glob(".*tmp"))  # the temporary file is gone
    loaded = load_unet_denoiser(path, device="cpu")
    assert isinstance(loaded, Denoiser)
    assert loaded.info == DenoiserInfo("unet", 1.5, 96, 10.0, 4.5, "round trip")
    x = _volume(40)
    np.testing.assert_array_equal(loaded(x), _denoiser(model)(x))


def test_bad_weights_files_give_input_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_unet_denoiser(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a torch file at all")
    with pytest.raises(InputError, match="not a readable torch weights file") as err:
        load_unet_denoiser(junk)
    assert str(err.value).startswith(str(junk)) and "\n" not in str(err.value)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(InputError, match="missing state_dict, config"):
        read_model_file(other)
    wrong = tmp_path / "wrong.pt"
    save_model(wrong, _net(depth=2))
    raw = torch.load(wrong, weights_only=True)
    raw["config"]["depth"] = 3
    torch.save(raw, wrong)
    with pytest.raises(InputError, match="do not fit"):
        load_unet_denoiser(wrong)
    raw["config"]["colour"] = "red"
    torch.save(raw, wrong)
    with pytest.raises(InputError, match="incompatible U-Net config"):
        load_unet_denoiser(wrong)


def test_metadata_is_validated(tmp_path):
    with pytest.raises(ValueError, match="voxel_size"):
        save_model(tmp_path / "m.pt", _net(depth=1), {"voxel_size": -1})
    with pytest.raises(ValueError, match="unknown model metadata"):
        save_model(tmp_path / "m.pt", _net(depth=1), {"pixel": 1})


def test_plugin_is_found_and_loads_weights(tmp_path):
    assert "unet" in available_denoisers()
    path = save_model(tmp_path / "m.pt", _net(depth=2), {"voxel_size": 2.0})
    denoiser = create_denoiser("unet", {"weights": str(path), "device": "cpu", "threads": 1})
    assert denoiser.info.voxel_size == 2.0 and denoiser.info.name == "unet"
    assert denoiser(_volume(32)).shape == (32, 32, 32)
    with pytest.raises(ValueError, match="unknown option"):
        create_denoiser("unet", {"weights": str(path), "colour": "red"})


def test_plugin_without_installed_model_says_so(monkeypatch, tmp_path):
    import credgui.denoise.unet as unet

    monkeypatch.setattr(unet, "default_weights_path", lambda: tmp_path / "cwred_unet.pt")
    with pytest.raises(InputError, match="no trained U-Net model is installed"):
        create_denoiser("unet", {})
