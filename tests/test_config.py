"""credgui.toml at the door (issue 15 cases 6, 8): a file must say what it wants, a half-saved
one is re-read briefly, non-finite numbers and binary bytes are one line naming the file."""

from __future__ import annotations

import threading
import time

import pytest

from credgui._io import write_text_atomic
from credgui.config import CONFIG_ENV, HookConfig, load_config, parse_config, write_config
from credgui.errors import InputError


@pytest.fixture(autouse=True)
def _no_env(monkeypatch):
    monkeypatch.delenv(CONFIG_ENV, raising=False)


@pytest.mark.parametrize("text, says", [("", "is empty"), ("pixel_size = 1.2\n", "sets pixel_size but not denoiser")])
def test_empty_or_partial_file_is_an_error(tmp_path, text, says):
    path = tmp_path / "credgui.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=says) as err:
        load_config(tmp_path)
    assert err.value.path == path and "\n" not in str(err.value)


def test_no_file_means_defaults_and_written_files_are_complete(tmp_path):
    assert load_config(tmp_path) == HookConfig()
    write_config(tmp_path / "credgui.toml", HookConfig(lambda_max=0.5))
    assert load_config(tmp_path) == HookConfig(lambda_max=0.5)  # denoiser written explicitly
    assert 'denoiser = "unet"' in (tmp_path / "credgui.toml").read_text()


def test_half_saved_file_is_re_read_until_complete(tmp_path):
    path = tmp_path / "credgui.toml"
    path.write_text('denoiser = "none"\nlambda_max = 0.')  # an editor mid-save
    with pytest.raises(InputError, match="invalid TOML"):
        load_config(tmp_path)
    done = threading.Timer(0.3, lambda: write_text_atomic(path, 'denoiser = "none"\nlambda_max = 0.25\n'))
    done.start()
    t0 = time.monotonic()
    assert load_config(tmp_path, retry_s=3.0).lambda_max == 0.25
    assert 0.2 < time.monotonic() - t0 < 10
    path.write_text("lambda_max = 0.")
    t0 = time.monotonic()
    with pytest.raises(InputError, match="invalid TOML"):
        load_config(tmp_path, retry_s=0.4)  # still broken: fails after the retry, not forever
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("text, says", [
    ('denoiser = "none"\npixel_size = inf\n', "pixel_size must be a finite number"),
    ('denoiser = "none"\nlambda_low_res = nan\n', "lambda_low_res must be a finite number"),
    (b'denoiser = "none"\n\xff\xfe\x00\x01', "not UTF-8 text"),
])
def test_nonsense_values_name_the_file(tmp_path, text, says):
    path = tmp_path / "credgui.toml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(InputError, match=says) as err:
        parse_config(path)
    assert str(err.value).startswith(str(path))
