"""sas-fast gallery: the page of a 100-image run (tiny model, 32-px images) opens in headless
Chromium with every image shown, and sorting by Overall orders the rows as game.npz says;
the pictures are the images as the model saw them; bad folders are one clear error."""
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from sas_fast.cli import main
from sas_fast.dataset import attribute_dataset
from sas_fast.gallery import _model_view, write_gallery
from sas_fast.models import preprocess_imagenet

pytest.importorskip("matplotlib")

N, SCORED = 100, 90               # images in the run; images game.npz scores (the rest: no curves)
CHROMIUM = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path))[..., :3]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An attribute-dataset folder of N random 32-px images (not merged) and a game.npz for the
    first SCORED images, in shuffled order: (folder, source images, game arrays)."""
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "images.npz", images=images, labels=rng.integers(0, 3, N))
    attribute_dataset(root / "images.npz", "tiny_model:make", root / "run", batch_size=50, chunk_size=50,
                      iterations=2, window=3, num_masks=6, backend="reference", progress=False)
    order = rng.permutation(SCORED)
    insertion, deletion = rng.random((SCORED, 11)), rng.random((SCORED, 11))
    game = dict(indices=order, names=order.astype(str), ratios=np.linspace(0, 1, 11), insertion=insertion,
                deletion=deletion, overall=insertion.mean(1) - deletion.mean(1),
                targets=np.zeros(SCORED, np.int64))
    np.savez(root / "run" / "game.npz", **game)
    return root / "run", images, game


@pytest.fixture(scope="module")
def page(run):
    return write_gallery(run[0], progress=False)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium binary (chromium, chromium-browser or "
                                             "google-chrome) on PATH; apt-get install chromium")
def test_page_opens_in_chromium_shows_every_image_and_sorts_by_overall(run, page):
    """``index.html?check`` makes the page load every image, click the Overall head and write
    what it saw into ``#check``; ``--dump-dom`` returns the page after that."""
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=10000", "--dump-dom", page.resolve().as_uri() + "?check"],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    check = json.loads(dom.split('<pre id="check">', 1)[1].split("</pre>", 1)[0])
    assert check["images"] == 2 * N and check["shown"] == 2 * N
    assert check["before"] == list(range(N))
    _, _, game = run
    best_first = [int(i) for i in game["indices"][np.argsort(-game["overall"], kind="stable")]]
    assert check["after"] == best_first + list(range(SCORED, N))


def test_pictures_are_the_images_as_stored_and_rows_hold_the_scores(run, page):
    """tiny_model's preprocessing is an affine map of the 32-px image, so the model's view is the
    stored image itself."""
    folder, images, game = run
    for index in (0, 57, N - 1):
        np.testing.assert_array_equal(_png(page.parent / "images" / f"{index}.png"), images[index])
        assert Image.open(page.parent / "images" / f"{index}_map.png").size == (32, 32)
    text = page.read_text()
    assert text.count("<tr data-index=") == N and (folder / "saliency.npz").exists()
    j = int(np.flatnonzero(game["indices"] == 5)[0])
    assert f'data-overall="{float(game["overall"][j])}"' in text
    assert '<tr data-index="95" ' in text and 'data-overall="nan"' in text


def test_model_view_undoes_crop_and_normalisation():
    """The view rebuilt from the black / white images equals the display image the ImageNet
    preprocessing returns itself (resize, centre crop), and the CIFAR-10 image (per-channel
    mean / std)."""
    photo = np.random.default_rng(1).integers(0, 256, (60, 90, 3), dtype=np.uint8)
    crop = _model_view(lambda image: preprocess_imagenet(image, size=32, crop=True)[0], photo)
    shown = preprocess_imagenet(photo, size=32, crop=True)[1].numpy()
    assert crop.shape == (32, 32, 3)
    np.testing.assert_allclose(crop, shown, atol=1e-5)
    from sas_fast.dataset.model_spec import _paper_preprocess

    cifar = _model_view(_paper_preprocess("cifar10"), photo[:32, :32])
    np.testing.assert_allclose(cifar, photo[:32, :32] / 255, atol=1e-6)


def test_a_model_that_cannot_be_loaded_shows_the_stored_images(run, tmp_path):
    folder, images, _ = run
    copy = tmp_path / "run"
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("gallery"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["config"]["model"] = "no_such_module:make"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="cannot load model 'no_such_module:make'"):
        written = write_gallery(copy, limit=3, progress=False)
    assert written.read_text().count("<tr data-index=") == 3
    np.testing.assert_array_equal(_png(copy / "gallery" / "images" / "2.png"), images[2])


def test_cli_writes_the_page_and_reports_bad_folders_in_one_line(run, tmp_path, capsys):
    folder, _, game = run
    assert main(["gallery", str(folder), "--out", str(tmp_path / "page"), "--limit", "4"]) == 0
    assert (tmp_path / "page" / "index.html").read_text().count("<tr data-index=") == 4
    capsys.readouterr()
    other = tmp_path / "other"
    shutil.copytree(folder, other, ignore=shutil.ignore_patterns("gallery"))
    np.savez(other / "game.npz", **dict(game, indices=game["indices"] + 50))
    for argv, message in [([str(tmp_path)], "no readable manifest.json"),
                          ([str(folder), "--limit", "0"], "limit must be a positive integer"),
                          ([str(other)], "scores images that saliency.npz does not hold (first: index 100)")]:
        assert main(["gallery", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sas-fast: ") and err.count("\n") == 1 and message in err, err

