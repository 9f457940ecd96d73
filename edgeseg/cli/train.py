"""``edgeseg train``: train a segmentation model on CT data."""

from __future__ import annotations

from pathlib import Path

import click

from edgeseg.atomic import check_output_folder
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.logs import configure_logging
from edgeseg.errors import require
from edgeseg.models.registry import MODELS


@click.command("train")
@input_limit_options
@click.option("--data", default="phantom", show_default=True,
              help="Training data: a NIfTI dataset (imagesTr/labelsTr), a DICOM series folder, a slice folder "
                   "(images/ + masks/), or 'phantom[:cases=N,seed=S,size=P,slices=Z]' generated on the fly.")
@click.option("--out", default="runs/train", show_default=True, type=click.Path(file_okay=False), help="Run folder for checkpoints, metrics and plots.")
@click.option("--model", "--arch", "model", type=click.Choice(sorted(MODELS)), default="unet", show_default=True,
              help="Architecture, a name `edgeseg models` lists.")
@click.option("--base", default=32, show_default=True, help="Width of the first U-Net level.")
@click.option("--depth", default=4, show_default=True, help="Number of down-sampling steps.")
@click.option("--size", default=256, show_default=True, help="Model input side in pixels (a multiple of 2**depth).")
@click.option("--window", default="0,255", show_default=True, help="HU window 'LO,HI' of the PreprocessSpec.")
@click.option("--labels", default="liver=1", show_default=True, help="Classes from source label values, e.g. 'liver=1+2' merges LiTS liver and tumour.")
@click.option("--intensity", default=None, help="What slice-folder pixels mean: 'hu-clipped:0,255' (default) or 'window:LO,HI'.")
@click.option("--epochs", default=120, show_default=True, help="Training epochs.")
@click.option("--batch-size", default=8, show_default=True, help="Slices per batch.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak learning rate (AdamW, warm-up then cosine).")
@click.option("--weight-decay", default=1e-4, show_default=True, help="AdamW weight decay.")
@click.option("--seed", default=0, show_default=True, help="Seed for the split, initialisation and augmentation.")
@click.option("--val-fraction", default=0.15, show_default=True, help="Share of cases held out for validation.")
@click.option("--test-fraction", default=0.15, show_default=True, help="Share of cases held out for testing.")
@click.option("--no-augment", is_flag=True, help="Disable augmentation.")
@click.option("--augment-p", default=0.25, show_default=True, type=float,
              help="Probability of each random transform (flips, rotation/scale, window, gamma, "
                   "contrast, noise) per slice.")
@click.option("--ema", "ema_epochs", default=0.0, show_default=True, type=float,
              help="Validate, save and export an exponential moving average of the weights over about "
                   "this many epochs (0 = the raw weights).")
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"]), default="auto", show_default=True,
              help="Mixed precision: auto = fp16 on CUDA, bf16 on CPUs with AMX, else float32.")
@click.option("--threads", default=0, help="CPU threads for torch (0: torch's default).")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Folder for the slice store (the data pre-processed once, reused by later runs and other "
                   "processes); default OUT/slice-store. A shared folder lets runs on the same data share it.")
@click.option("--workers", default=-1, show_default="one per core but one, at most 4",
              help="DataLoader worker processes reading and augmenting batches (0: in the training process).")
@click.option("--foreground-share", default=1 / 3, show_default="1/3", type=float,
              help="Share of each batch drawn from slices containing each class in turn; the rest is uniform.")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def command(**opts) -> None:
    """Train a segmentation model (--model, default unet); writes OUT/best.pt, OUT/last.pt, metrics.csv/json and curves.png."""
    require("torch", "train", "edgeseg train")
    from edgeseg.train.config import TrainConfig, parse_labels, parse_pair
    from edgeseg.train.loop import train

    check_output_folder(opts["out"], "--out")
    if opts["cache"] is not None:
        check_output_folder(opts["cache"], "slice store cache (--cache)")
    configure_logging()
    test = opts["test_fraction"]
    val = opts["val_fraction"]
    # An existing path is recorded absolute, so export and evaluate find the data from any folder.
    data = str(Path(opts["data"]).resolve()) if Path(opts["data"]).exists() else opts["data"]
    cfg = TrainConfig(
        data=data, out=opts["out"], model=opts["model"], base=opts["base"], depth=opts["depth"],
        size=opts["size"], window=parse_pair(opts["window"], "--window"), labels=parse_labels(opts["labels"]),
        intensity=opts["intensity"], epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"],
        weight_decay=opts["weight_decay"], seed=opts["seed"], fractions=(1.0 - val - test, val, test),
        augment=not opts["no_augment"], augment_p=opts["augment_p"], ema_epochs=opts["ema_epochs"], amp=opts["amp"], threads=opts["threads"],
        cache=str(Path(opts["cache"]).resolve()) if opts["cache"] else None, workers=opts["workers"],
        foreground_share=opts["foreground_share"],
    )
    result = train(cfg, resume=opts["resume"], progress=not opts["quiet"])
    best = result["best"]
    click.echo(f"best val Dice {best['val_dice']:.4f} at epoch {best['epoch']}; checkpoint {result['out']}/best.pt")
