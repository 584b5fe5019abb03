"""EmojiScenes and the downstream tasks: determinism, masks, labels, splits."""
import pytest
import torch

from tvelib import data


@pytest.mark.parametrize("task", data.TASKS)
def test_same_seed_same_scenes(task):
    a = data.make_scenes(task, "train", 3, 7, 6)
    b = data.make_scenes(task, "train", 3, 7, 6)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert torch.equal(a.masks, b.masks)


def test_other_index_seed_or_split_differs():
    base = data.make_scenes("emoji", "train", 3, 7, 6)
    for other in (data.make_scenes("emoji", "train", 3, 8, 6), data.make_scenes("emoji", "train", 4, 7, 6),
                  data.make_scenes("emoji", "test", 3, 7, 6)):
        assert not torch.equal(base.images, other.images)


def test_stream_resumes_at_any_batch():
    stream = data.train_batches("emoji", 4, start=0)
    first = [next(stream) for _ in range(3)]
    resumed = next(data.train_batches("emoji", 4, start=2))
    assert torch.equal(first[2].images, resumed.images)


def test_fixed_set_sizes_and_repeatability():
    a = list(data.fixed_set("mnist", "test", 10, batch=4))
    b = list(data.fixed_set("mnist", "test", 10, batch=4))
    assert [len(s.labels) for s in a] == [4, 4, 2]
    assert all(torch.equal(x.images, y.images) for x, y in zip(a, b))


@pytest.mark.parametrize("task", data.TASKS)
def test_scene_shapes_and_ranges(task):
    s = data.make_scenes(task, "test", 0, 0, 8)
    assert s.images.shape == (8, 3, data.IMAGE_SIZE, data.IMAGE_SIZE) and s.images.dtype == torch.float32
    assert 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0
    assert s.masks.shape == (8, data.IMAGE_SIZE, data.IMAGE_SIZE) and s.masks.dtype == torch.bool
    assert int(s.labels.min()) >= 0 and int(s.labels.max()) < data.num_classes(task)
    area = s.masks.float().mean(dim=(1, 2))
    assert bool((area > 0.01).all()), area  # the main object is always visible
    cells = data.grid_mask(s.masks)
    assert cells.shape == (8, data.GRID, data.GRID)


def _label_alpha(task: str, s: data.Scenes, labels: torch.Tensor) -> torch.Tensor:
    """Where a sprite of class `labels` would be, placed with each scene's main-sprite geometry."""
    pool = data.sprite_pool(task, "test")
    # one sprite per class for emoji tasks: class index == sprite index
    placed = data._warp(pool.take(labels), s.main_theta, data.IMAGE_SIZE)
    return placed[:, 3] > 0.5  # [B,H,W]


@pytest.mark.parametrize("task", ["emoji", "novel"])
def test_masks_match_labels(task):
    n = 64
    s = data.make_scenes(task, "test", 0, 0, n, max_distractors=0)
    right = _label_alpha(task, s, s.labels)
    # without distractors the mask is exactly the labelled sprite's alpha
    assert torch.equal(s.masks, right)
    wrong = _label_alpha(task, s, (s.labels + 1) % data.num_classes(task))
    inter = (s.masks & wrong).flatten(1).sum(1).float()
    union = (s.masks | wrong).flatten(1).sum(1).float()
    assert float((inter / union).mean()) < 0.9  # another class's shape does not fit the mask


def test_distractors_only_remove_mask_pixels():
    s = data.make_scenes("emoji", "test", 0, 0, 32)
    full = _label_alpha("emoji", s, s.labels)
    assert bool((s.masks & ~full).sum() == 0)  # visible part of the main sprite only
    assert bool((s.masks.sum() < full.sum()))  # and some scenes have it partly covered


def test_colour_is_randomised():
    # the same class, drawn many times, gets very different mean colours inside its mask
    s = data.make_scenes("mnist", "test", 0, 0, 64, max_distractors=0)
    m = s.masks.unsqueeze(1).float()
    colour = (s.images * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3))  # [B,3]
    assert float(colour.std(dim=0).min()) > 0.1


def test_classes_are_disjoint_and_enough():
    pre, novel, _ = data.emoji_class_lists()
    assert len(pre) >= 100 and len(novel) >= 20
    assert not set(pre) & set(novel)
    assert data.class_names("fashion")[0] == "t-shirt" and data.class_names("mnist") == [str(d) for d in range(10)]


def test_probe_splits_are_disjoint_sources():
    # Fashion-MNIST train scenes draw from the 60k train images, test scenes from the 10k t10k
    assert len(data.sprite_pool("fashion", "train")) == 60000
    assert len(data.sprite_pool("fashion", "test")) == 10000
    tr, te = data.sprite_pool("mnist", "train"), data.sprite_pool("mnist", "test")
    assert len(tr) + len(te) == 10000 and len(te) == 2000


def test_more_pretraining_classes_keep_the_first_200_the_novel_ones_and_downstream_scenes():
    emoji200, novel200 = data.class_names("emoji"), data.class_names("novel")
    mnist200 = data.make_scenes("mnist", "test", 1000, 0, 8).images
    try:
        data.use_pretrain_classes(600)
        data._POOL_CACHE.clear()  # nothing may survive from the 200-class pools
        emoji600 = data.class_names("emoji")
        assert len(emoji600) == 600 and emoji600[:200] == emoji200
        assert data.class_names("novel") == novel200 and not set(emoji600) & set(novel200)
        assert torch.equal(data.make_scenes("mnist", "test", 1000, 0, 8).images, mnist200)
        labels = torch.cat([data.make_scenes("emoji", "train", 1, i, 64).labels for i in range(4)])
        assert int(labels.max()) < 600 and int((labels >= 200).sum()) > 100  # most draws are new classes
    finally:
        data.use_pretrain_classes(200)
    assert data.class_names("emoji") == emoji200


def test_luminance_contrast_of_an_object_against_its_surround():
    images = torch.full((2, 3, 32, 32), 0.5)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[:, 10:20, 10:20] = True
    images[0, :, 10:20, 10:20] = 0.9  # bright square on grey
    images[1, 0, 10:20, 10:20] = 0.5 + 0.5 * 0.114 / 0.299  # same luminance, another hue
    images[1, 2, 10:20, 10:20] = 0.0
    c = data.luminance_contrast(data.Scenes(images, torch.zeros(2, dtype=torch.long), masks))
    assert c[0] == pytest.approx(0.4, abs=1e-5) and c[1] == pytest.approx(0.0, abs=1e-5)


def test_fixed_evaluation_sets_never_change():
    # Every recorded number (encoder top-1, probes, explainer fidelity) was measured on these sets.
    # First four scenes of each: labels exactly, mean pixel value per scene (a tolerance, not a
    # hash, so that another CPU's rounding in grid_sample does not count as a change). Recorded on
    # 2026-12-01 with the generator as it was before line art was added, and unchanged by it.
    expected = {
        ("emoji", "test"): ([131, 151, 137, 21], [0.82116, 0.615498, 0.514341, 0.598383]),
        ("novel", "test"): ([11, 11, 11, 17], [0.456354, 0.459679, 0.225276, 0.391039]),
        ("fashion", "test"): ([2, 9, 1, 4], [0.522065, 0.628152, 0.511813, 0.542393]),
        ("mnist", "test"): ([6, 6, 1, 8], [0.491299, 0.516232, 0.456722, 0.47608]),
        ("novel", "train"): ([3, 5, 18, 31], [0.452189, 0.157125, 0.341439, 0.441915]),
        ("fashion", "train"): ([7, 0, 8, 4], [0.415384, 0.505605, 0.426211, 0.461694]),
        ("mnist", "train"): ([8, 2, 9, 7], [0.567249, 0.490422, 0.475502, 0.594537]),
    }
    for (task, split), (labels, means) in expected.items():
        s = next(data.fixed_set(task, split, 4))
        assert s.labels.tolist() == labels, (task, split)
        assert s.images.mean(dim=(1, 2, 3)).tolist() == pytest.approx(means, abs=1e-4), (task, split)


def test_line_art_replaces_the_main_emoji_by_its_outline_drawing():
    plain = data.make_scenes("emoji", "train", 3, 0, 48)
    assert torch.equal(data.make_scenes("emoji", "train", 3, 0, 48, line_art=0.0).images, plain.images)
    drawn = data.make_scenes("emoji", "train", 3, 0, 48, line_art=1.0)
    assert torch.equal(drawn.labels, plain.labels)  # same classes, poses, backgrounds and clutter
    has = data.sprite_pool("emoji", "train").line_art()[1][plain.labels]  # [B] bool
    assert 0 < int(has.sum()) < len(has)
    same = (drawn.images == plain.images).flatten(1).all(1)
    assert bool(same[~has].all())  # a class Symbola lacks keeps its colour emoji
    assert not bool(same[has].any())
    # strokes cover less of the canvas than the filled emoji in the same pose, and only within it
    assert bool((drawn.masks[has].flatten(1).sum(1) < plain.masks[has].flatten(1).sum(1)).float().mean() > 0.9)
    half = data.make_scenes("emoji", "train", 3, 0, 48, line_art=0.5)
    changed = ~(half.images == plain.images).flatten(1).all(1)
    assert 0.2 < float(changed[has].float().mean()) < 0.8


def test_line_art_exists_only_for_pretraining_emoji():
    with pytest.raises(ValueError, match="line art"):
        data.make_scenes("mnist", "train", 3, 0, 4, line_art=0.5)
