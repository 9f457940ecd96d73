"""``edgeseg train``: train a segmentation model on CT data."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click

from edgeseg.atomic import check_output_folder
from edgeseg.cli.input_limits import input_limit_options
from edgeseg.cli.quiet_option import quiet_option
from edgeseg.errors import EdgesegError, require
from edgeseg.models.registry import MODELS
from edgeseg.train.config import LOSSES, MEMORY_FORMATS


@click.command("train")
@input_limit_options
@click.option("--data", default="phantom", show_default=True,
              help="Training data: a NIfTI dataset (imagesTr/labelsTr), a DICOM series folder, a slice folder "
                   "(images/ + masks/), or 'phantom[:cases=N,seed=S,size=P,slices=Z]' generated on the fly.")
@click.option("--out", default="runs/train", show_default=True, type=click.Path(file_okay=False), help="Run folder for checkpoints, metrics and plots.")
@click.option("--model", "--arch", "model", type=click.Choice(sorted(MODELS), case_sensitive=False), default="unet", show_default=True,
              help="Architecture, a name `edgeseg models` lists.")
@click.option("--base", default=32, show_default=True, help="Width of the first U-Net level.")
@click.option("--depth", default=4, show_default=True, help="Number of down-sampling steps.")
@click.option("--size", default=256, show_default=True, help="Model input side in pixels (a multiple of 2**depth).")
@click.option("--window", default="0,255", show_default=True, help="HU window 'LO,HI' of the PreprocessSpec.")
@click.option("--fit", type=click.Choice(["stretch", "pad"], case_sensitive=False), default="stretch", show_default=True,
              help="How slices meet the model size: stretch to it, or pad (keep the aspect ratio, pad with "
                   "the window's low value).")
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
@click.option("--amp", type=click.Choice(["auto", "off", "bf16", "fp16"], case_sensitive=False), default="auto", show_default=True,
              help="Mixed precision: auto = fp16 on CUDA, bf16 on CPUs with AMX, else float32.")
@click.option("--memory-format", type=click.Choice(list(MEMORY_FORMATS), case_sensitive=False), default="auto", show_default=True,
              help="Layout of weights and batches (contiguous = NCHW). auto: time both on this CPU with this model "
                   "and batch before the first epoch and keep the faster (a resumed run on the same machine keeps "
                   "its layout); channels-last on CUDA or when a step takes under 0.25 s.")
@click.option("--threads", default=0, show_default=True, help="CPU threads for torch (0: torch's default).")
@click.option("--deterministic", is_flag=True, default=False,
              help="Deterministic algorithms only (torch.use_deterministic_algorithms, cuDNN deterministic without "
                   "benchmark, CUBLAS_WORKSPACE_CONFIG=:4096:8), so a CUDA run repeats bit for bit; slower. "
                   "Kept for the whole run: --resume refuses to change it.")
@click.option("--recipe", default=None, help="Training defaults from a recipe: a shipped name (covid-infection, liver-ct) "
                                             "or a TOML file; flags given here override it.")
@click.option("--mask", type=click.Choice(["auto", "binary", "labels"], case_sensitive=False), default="auto", show_default=True,
              help="Slice folders: masks are binary 0/255, label maps (values are classes), or detected.")
@click.option("--case-pattern", default=None,
              help="Slice folders: regex with (?P<case>) and (?P<slice>) groups, or 'file' for one case per file.")
@click.option("--loss", type=click.Choice(list(LOSSES), case_sensitive=False), default="dice-ce", show_default=True,
              help="Region term (Dice or Tversky) plus pixel term (cross-entropy or focal).")
@click.option("--class-weights", default=None, help="Pixel-loss weight per class, background first, e.g. '0.5,1,2'.")
@click.option("--regions", default=None,
              help="Region-based training (nnU-Net's): one sigmoid output per region of classes, e.g. '1+2,2' for "
                   "[[1, 2], [2]]; region k decodes to class k + 1 (default: softmax over the classes).")
@click.option("--folds", default=0, show_default=True, type=click.IntRange(min=0),
              help="k-fold cross-validation by case (0: the --val/--test-fraction split).")
@click.option("--fold", default=0, show_default=True, type=click.IntRange(min=0), help="Which fold to hold out (0-based).")
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pt (written by any number of processes).")
@click.option("--overwrite", is_flag=True,
              help="Train again from epoch 1 into an OUT that holds a training (refused without it or --resume).")
@click.option("--nproc", default=1, show_default=True, type=int,
              help="Train in this many processes on this machine (DistributedDataParallel, one per GPU on CUDA, "
                   "else gloo on the CPU cores): runs torchrun --standalone --nproc-per-node N -m edgeseg train.")
@click.option("--launcher", type=click.Choice(["slurm"], case_sensitive=False), default=None,
              help="slurm: this process is one task of an srun step (srun -n N edgeseg train --launcher slurm ...); "
                   "its place in the run comes from srun's SLURM_* variables. Without it only torchrun's are read.")
@click.option("--sync-bn", is_flag=True, default=False, help="With several processes on CUDA, batch norm statistics over the global batch.")
@click.option("--cache", default=None, type=click.Path(file_okay=False),
              help="Folder for the slice store (the data pre-processed once, reused by later runs and other "
                   "processes); default OUT/slice-store. A shared folder lets runs on the same data share it.")
@click.option("--workers", default=None, type=click.IntRange(min=0), show_default="one per core but one, at most 4",
              help="DataLoader worker processes reading and augmenting batches (0: in the training process).")
@click.option("--foreground-share", default=1 / 3, show_default="1/3", type=float,
              help="Share of each batch drawn from slices containing each class in turn; the rest is uniform.")
@quiet_option
def command(**opts) -> None:
    """Train a segmentation model (--model, default unet); writes OUT/best.pt, OUT/last.pt, metrics.csv/json and curves.png."""
    recipe = None
    if opts["recipe"] is not None:
        from edgeseg.train.recipes import load_recipe

        recipe = load_recipe(opts["recipe"])
    ctx = click.get_current_context()
    cfg = config_from_options(opts, recipe, ctx)
    from edgeseg.train.slurm import check_not_an_unlaunched_task, torchrun_variables

    if opts["launcher"] == "slurm":
        if opts["nproc"] != 1:
            raise EdgesegError("--nproc starts torchrun on this machine; under --launcher slurm srun starts the "
                               "processes (srun -n N), leave out --nproc")
        # torch.distributed and the rest of the command read torchrun's variables
        os.environ.update(torchrun_variables(os.environ))
    else:
        check_not_an_unlaunched_task(os.environ)
    under_torchrun = "WORLD_SIZE" in os.environ
    if under_torchrun and opts["nproc"] != 1:
        raise EdgesegError("--nproc starts torchrun itself; under torchrun give the process count to its --nproc-per-node")
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        check_output_folder(opts["out"], "--out")
        check_out_beside_data(opts["out"], cfg.data)
        if opts["cache"] is not None:
            check_output_folder(opts["cache"], "slice store cache (--cache)")
    check_data_openable(cfg.data)
    # torch (a second or more to import) only once the settings and folders are accepted: a bad
    # setting is refused at once
    require("torch", "train", "edgeseg train")
    from edgeseg.train.loop import train

    if not main_process:
        logging.getLogger("edgeseg").setLevel(logging.WARNING)
    if opts["nproc"] != 1:
        from edgeseg.train.distributed import check_process_count
        from edgeseg.train.launch import launch
        from edgeseg.train.run_data import check_launch

        check_process_count(opts["nproc"])
        if cfg.deterministic:  # before torchrun starts: its processes inherit the environment
            from edgeseg.train.determinism import prepare_cublas

            prepare_cublas()
        # refused here, before torchrun starts processes that would each print the refusal and
        # torchrun its report (a single process checks the same in train)
        check_launch(cfg, opts["resume"], opts["overwrite"], progress=not opts["quiet"], processes=opts["nproc"])
        launch(opts["nproc"], _repeat_options(ctx, skip={"nproc"}), out=opts["out"])
        return
    result = train(cfg, resume=opts["resume"], progress=not opts["quiet"], overwrite=opts["overwrite"])
    if not main_process:
        return
    best = result["best"]
    click.echo(f"best val Dice {best['val_dice']:.4f} at epoch {best['epoch']}; checkpoint {result['out']}/best.pt")


def check_out_beside_data(out: str, data: str | None) -> None:
    """Refuse a run folder inside the data folder: its checkpoints and slice store would become
    files of the data set (which a slice folder or a NIfTI data set then reads as cases)."""
    from edgeseg.atomic import within

    if data and os.path.isdir(data) and within(out, data):
        raise EdgesegError(f"--out {out} lies inside the data folder {data}; the run would write into the data, "
                           "give an --out outside it")


def check_data_openable(data: str) -> None:
    """Refuse a mistyped --data (no such folder, no images in it, a bad phantom option) by name,
    after the output checks and before torch, the model and the slice store are set up."""
    from edgeseg.data.open import check_openable

    check_openable(data)


def _repeat_options(ctx: click.Context, skip: set[str]) -> list[str]:
    """The options given on this command line, again (for the processes torchrun starts); options
    left at their default are left out, so a recipe's values still apply there."""
    from click.core import ParameterSource

    args: list[str] = []
    for param in ctx.command.params:
        if param.name in skip or param.name not in ctx.params or not isinstance(param, click.Option):
            continue
        if ctx.get_parameter_source(param.name) == ParameterSource.DEFAULT:
            continue
        value = ctx.params[param.name]
        if param.is_flag:
            args += [param.opts[0]] if value else []
        elif value is not None:
            args += [param.opts[0], str(value)]
    return args


def config_from_options(opts: dict, recipe, ctx: click.Context):
    """The TrainConfig of the command line: the recipe's values where a flag was not given."""
    from click.core import ParameterSource

    from edgeseg.train.config import TrainConfig, parse_labels, parse_pair

    test, val = opts["test_fraction"], opts["val_fraction"]
    from edgeseg.data.open import check_source

    # An existing path is recorded absolute, so export and evaluate find the data from any folder.
    data = check_source(opts["data"], "--data")
    data = str(Path(data).resolve()) if Path(data).exists() else data
    values = dict(
        data=data, out=opts["out"], model=opts["model"], base=opts["base"], depth=opts["depth"],
        size=opts["size"], window=parse_pair(opts["window"], "--window"), labels=parse_labels(opts["labels"]),
        intensity=opts["intensity"], epochs=opts["epochs"], batch_size=opts["batch_size"], lr=opts["lr"],
        weight_decay=opts["weight_decay"], seed=opts["seed"], fractions=(1.0 - val - test, val, test),
        augment=not opts["no_augment"], augment_p=opts["augment_p"], ema_epochs=opts["ema_epochs"], amp=opts["amp"],
        threads=opts["threads"], fit=opts["fit"], mask=opts["mask"], case_pattern=opts["case_pattern"],
        loss=opts["loss"], folds=opts["folds"], fold=opts["fold"],
        class_weights=_parse_weights(opts["class_weights"]), regions=_parse_regions(opts["regions"]), sync_bn=opts["sync_bn"],
        cache=str(Path(opts["cache"]).resolve()) if opts["cache"] else None,
        workers=-1 if opts["workers"] is None else opts["workers"],  # -1: TrainConfig's default from the cores
        foreground_share=opts["foreground_share"], memory_format=opts["memory_format"],
        deterministic=opts["deterministic"],
    )
    if recipe is not None:
        given = {name for name in ctx.params if ctx.get_parameter_source(name) != ParameterSource.DEFAULT}
        given |= {"augment"} if "no_augment" in given else set()
        values.update({key: value for key, value in recipe.values.items() if key not in given})
        values["recipe"] = recipe.record()
        # what a recipe says about slice folders (how to read their pixels, masks, names) does
        # not apply to volumes: a liver recipe made for the MSD slices trains on NIfTI too
        unused = [k for k in ("intensity", "case_pattern", "mask") if k in recipe.values and k not in given]
        if unused and not _is_slice_folder(data):
            defaults = {"intensity": None, "case_pattern": None, "mask": "auto"}
            values.update({k: defaults[k] for k in unused})
            logging.getLogger("edgeseg.train").info("recipe %s: %s apply to slice folders only; not used on %s",
                                                    recipe.name, ", ".join(unused), data)
    return TrainConfig(**values)


def _is_slice_folder(data: str) -> bool:
    """Whether ``data`` is a folder of image slices (a phantom spec, a NIfTI file or a DICOM or
    NIfTI dataset is not; an unreadable one counts as slices, for open_dataset to report)."""
    from edgeseg.data.open import detect_layout
    from edgeseg.errors import EdgesegError

    path = Path(data)
    if not path.is_dir():
        return False
    try:
        return detect_layout(path) == "slices"
    except EdgesegError:
        return True


def _parse_regions(text: str | None) -> list[list[int]] | None:
    from edgeseg.models.region_order import parse_regions

    return None if text is None else parse_regions(text)


def _parse_weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise click.BadParameter(f"expected numbers separated by commas, got {text!r}", param_hint="--class-weights") from None
