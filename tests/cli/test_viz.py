"""``gspdml viz weights`` and ``gspdml viz prototypes`` on saved checkpoints (gspdml.cli.viz)."""
from __future__ import annotations

import numpy as np
from PIL import Image

from gspdml.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(8) == PNG_MAGIC


def _checkpoint(tmp_path, make, dataset: str):
    """An untrained small GSP model (digits: smallcnn, tokens: token_embedding) saved as a run folder."""
    if dataset == "digits_collage":
        backbone, backbone_kwargs = "smallcnn", {"widths": [8, 8, 16]}
    else:
        backbone, backbone_kwargs = "token_embedding", {"num_tokens": 68, "dim": 8}
    return make(tmp_path / f"run_{dataset}", dataset=dataset, options={"samples_per_class": 3, "seed": 0},
                backbone=backbone, backbone_kwargs=backbone_kwargs, pooling_kwargs={"num_prototypes": 5},
                num_classes=8)


def test_cli_viz_weights_and_prototypes_on_digits(tmp_path, untrained_checkpoint):
    run = _checkpoint(tmp_path, untrained_checkpoint, "digits_collage")
    assert main(["viz", "weights", "--checkpoint", str(run), "--num", "6", "--device", "cpu"]) == 0
    assert _is_png(run / "analysis" / "weights_digits_collage_test.png")
    assert main(["viz", "weights", "--checkpoint", str(run), "--num", "4", "--by-prototype", "--device", "cpu",
                 "--name", "dom.png"]) == 0
    assert _is_png(run / "analysis" / "dom.png")
    # own image files (greyscale PNGs for the one-channel smallcnn)
    paths = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.rand(48, 48) * 255).astype(np.uint8)).save(p)
        paths.append(str(p))
    out = tmp_path / "figs"
    assert main(["viz", "weights", "--checkpoint", str(run), "--images", *paths, "--out", str(out), "--device", "cpu"]) == 0
    assert _is_png(out / "weights_images.png")
    assert main(["viz", "prototypes", "--checkpoint", str(run), "--split", "train", "--no-progress", "--device", "cpu"]) == 0
    assert _is_png(run / "analysis" / "prototypes_digits_collage_train.png")


def test_cli_viz_weights_rejects_token_models(tmp_path, capsys, untrained_checkpoint):
    run = _checkpoint(tmp_path, untrained_checkpoint, "tokens")
    assert main(["viz", "weights", "--checkpoint", str(run), "--device", "cpu"]) == 2
    assert "needs an image model" in capsys.readouterr().err
    assert main(["viz", "prototypes", "--checkpoint", str(run), "--no-progress", "--device", "cpu"]) == 0
    assert _is_png(run / "analysis" / "prototypes_tokens_test.png")
