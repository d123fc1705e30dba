"""The `lvm` command. Thin: it parses arguments and calls library functions; no math lives here.
Every error a user can cause ends in one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from lvm.engine.errors import UserError
from lvm.homework.grade import grade
from lvm.engine.train import Interrupted


class Group(click.Group):
    """A click group that turns every user error into one line and a non-zero exit."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except UserError as e:
            click.echo(f"Error: {e}", err=True)
            sys.exit(2)
        except Interrupted as e:
            click.echo(f"\n{e}", err=True)
            sys.exit(130)
        except (click.Abort, KeyboardInterrupt):
            click.echo("\nAborted.", err=True)
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def _positive(ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"must be at least 1, got {value}")
    return value


def _with_resume_hint(e: Interrupted, fallback: list[str]) -> Interrupted:
    """The interruption with the command that continues it: the user's own command line plus
    --resume, or `fallback` (the command's name and required arguments) when not run as `lvm`."""
    again = [a for a in sys.argv[1:] if a != "--resume"] if sys.argv[1:2] == fallback[:1] else fallback
    return Interrupted(f"{e}\nresume with: lvm {shlex.join(again)} --resume")


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder holding datasets in torchvision's layout [default: $LVM_DATA_DIR or ~/.cache/lvm].",
)
download_option = click.option(
    "--download/--no-download", default=True, show_default=True,
    help="Let torchvision download a missing dataset when the network allows.",
)


@click.group(cls=Group)
@click.version_option(package_name="lvm")
def cli():
    """Latent-variable models: VAE, VLAE, VQ-VAE and PixelCNN, trained and reported the course's way."""


@cli.command()
@click.argument("model")
@click.option("--dataset", default=None, help="Dataset name (see `lvm list`) [default: the model's].")
@click.option("--epochs", type=int, default=None, callback=_positive, help="Epochs [default: the course's].")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="Minibatch size [default: 128].")
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: 1e-3].")
@click.option("--seed", type=int, default=None, help="Random seed [default: 0].")
@click.option("--device", default=None, help="auto, cpu or cuda [default: auto].")
@data_dir_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: figures/MODEL/DATASET].")
@click.option("--train-limit", type=int, default=None, callback=_positive, help="Use the first N training examples.")
@click.option("--test-limit", type=int, default=None, callback=_positive, help="Use the first N test examples.")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in --out.")
@click.option("--prior", type=click.Choice(["pixelcnn", "gated"]), default=None,
              help="Prior over codes (vqvae) or the model variant (pixelcnn).")
@click.option("--prior-epochs", type=int, default=None, callback=_positive, help="Epochs of the prior (vqvae) [default: 15].")
@click.option("--channels", type=int, default=None, callback=_positive,
              help="Width of the PixelCNN's layers (pixelcnn) [default: the course's].")
@click.option("--layers", type=int, default=None, callback=_positive,
              help="Residual blocks, or gated layers with --prior gated (pixelcnn) [default: the course's].")
@click.option("--amp", type=click.Choice(["auto", "on", "off"]), default=None,
              help="bf16 autocast of training steps: auto = on CUDA only [default: auto].")
@download_option
def run(model, dataset, epochs, batch_size, lr, seed, device, data_dir, out, train_limit, test_limit,
        resume, prior, prior_epochs, channels, layers, amp, download):
    """Train MODEL on a dataset and write its row of the results table: metrics.json,
    history.json, train_plot.png and the model's figures."""
    from lvm.engine import pipeline as experiment

    if lr is not None and not lr > 0:
        raise click.BadParameter(f"must be positive, got {lr}", param_hint="'--lr'")
    try:
        metrics = experiment.run(
            model, dataset, out=out, data_dir=data_dir, train_limit=train_limit, test_limit=test_limit,
            resume=resume, download=download,
            options={"prior": prior, "prior_epochs": prior_epochs, "channels": channels, "layers": layers},
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, amp=amp,
        )
    except Interrupted as e:
        raise _with_resume_hint(e, ["run", model]) from None
    from lvm.engine.train import is_main_process

    if not is_main_process():
        return
    out = out or Path("figures") / metrics["model"] / metrics["dataset"]
    click.echo(experiment.final_line(metrics["model"], metrics["test"]))
    click.echo(f"{metrics['seconds']:.0f} s on {metrics['device']}; wrote {out}/")


@cli.command()
@click.option("--dataset", required=True, help="Dataset name (see `lvm list`).")
@click.option("--figures", type=click.Path(file_okay=False, path_type=Path), default=Path("figures"),
              show_default=True, help="Root folder: rows go to FIGURES/MODEL/DATASET[-gated].")
@click.option("--device", default=None, help="auto, cpu or cuda [default: auto].")
@click.option("--seed", type=int, default=None, help="Random seed of every row [default: 0].")
@data_dir_option
@click.option("--epochs", type=int, default=None, callback=_positive, help="Epochs of every row [default: each model's].")
@click.option("--prior-epochs", type=int, default=None, callback=_positive, help="Epochs of the priors over codes (vqvae).")
@click.option("--train-limit", type=int, default=None, callback=_positive, help="Use the first N training examples.")
@click.option("--test-limit", type=int, default=None, callback=_positive, help="Use the first N test examples.")
@click.option("--resume", is_flag=True, help="Resume every row from its checkpoints (finished rows train no further).")
@download_option
def table(dataset, figures, device, seed, data_dir, epochs, prior_epochs, train_limit, test_limit, resume, download):
    """Train every model of the results table on one dataset (default budgets), timing each row;
    writes FIGURES/table-DATASET.json."""
    from lvm import table as tbl

    try:
        tbl.run(dataset, figures=figures, data_dir=data_dir, download=download, device=device, seed=seed,
                epochs=epochs, prior_epochs=prior_epochs, train_limit=train_limit, test_limit=test_limit,
                resume=resume, echo=click.echo)
    except Interrupted as e:
        raise _with_resume_hint(e, ["table", "--dataset", dataset]) from None


@cli.group()
def data():
    """Inspect datasets."""


@data.command("show")
@click.argument("name")
@data_dir_option
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write the picture, a .png [default: runs/data/NAME.png].")
@download_option
def data_show(name, data_dir, out, download):
    """Load dataset NAME, print its sizes, and draw 100 training examples."""
    from lvm.engine import data as datasets
    from lvm.engine.plotting import save_image_grid, save_scatter

    out = out or Path("runs") / "data" / f"{name}.png"
    if out.suffix.lower() != ".png":  # matplotlib would pick a format from the suffix, or fail
        raise UserError(f"--out {out}: the picture is a PNG; give a path ending in .png")
    d = datasets.load(name, data_dir, download=download)
    try:
        if d.info.kind == "points":
            written = save_scatter({"train": d.train}, out, f"{name}: training data")
        else:
            scale = 1.0 if d.info.kind == "binary" else 255.0
            written = save_image_grid(d.train[:100].float() / scale, out, f"{name}: 100 training examples")
    except OSError as e:  # --out under a file, in a read-only folder, on a full disk
        blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker else e.strerror or e
        raise UserError(f"cannot write {out}: {why}") from None
    click.echo(f"{name}: {len(d.train)} train, {len(d.test)} test, one example: "
               f"{'x'.join(map(str, d.info.shape))} {str(d.train.dtype).replace('torch.', '')}")
    click.echo(f"wrote {written}")


@cli.command("list")
@data_dir_option
def list_(data_dir):
    """Models, and datasets with whether each is on disk."""
    from lvm.engine import data as datasets
    from lvm import registry

    root = datasets.data_root(data_dir)  # a bad one is the one line printed, before any other
    click.echo("models:")
    for name in registry.names():
        e = registry.get(name)
        click.echo(f"  {name:<22} {e.summary} [default data: {e.default_dataset}]")
    click.echo(f"datasets (data dir: {root}):")
    for name, src in datasets.DATASETS.items():  # on disk or not is judged without opening any file
        where = "built in" if src.builtin else ("on disk" if datasets.on_disk(name, root) else "missing")
        click.echo(f"  {name:<22} {src.summary} [{where}]")


checkpoint_option = click.option(
    "--checkpoint", required=True, type=click.Path(dir_okay=False, path_type=Path),
    help="A checkpoint.pt written by `lvm run`.",
)


@cli.command()
@checkpoint_option
@click.option("-n", "count", type=int, default=100, show_default=True, callback=_positive, help="How many samples.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("samples.png"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def sample(checkpoint, count, out, seed):
    """Draw samples from a trained model."""
    from lvm.engine import pipeline as experiment

    click.echo(f"wrote {experiment.sample_to_file(checkpoint, count, out, seed)}")


@cli.command()
@checkpoint_option
@click.option("--dataset", required=True, help="Dataset whose test images to reconstruct.")
@click.option("-n", "count", type=int, default=50, show_default=True, callback=_positive, help="How many images.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("reconstructions.png"), show_default=True)
@data_dir_option
@download_option
def reconstruct(checkpoint, dataset, count, out, data_dir, download):
    """Reconstruct test images with a trained model: originals beside reconstructions."""
    from lvm.engine import pipeline as experiment

    click.echo(f"wrote {experiment.reconstruct_to_file(checkpoint, dataset, out, count, data_dir, download)}")


@cli.command()
@click.argument("model")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="[default: the model's]")
@click.option("--steps", type=int, default=20, show_default=True, callback=_positive, help="Timed steps (after 3 warm-up steps).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile our step (the reference is never compiled).")
@click.option("--amp", type=click.Choice(["auto", "on", "off"]), default=None,
              help="bf16 autocast of our step: auto = on CUDA only [default: the model's].")
def bench(model, device, batch_size, steps, compile_, amp):
    """Time training steps of MODEL's default configuration against the course's plain loop; one JSON line."""
    import json

    from lvm.bench import bench as run_bench

    click.echo(json.dumps(run_bench(model, device, batch_size, steps, compile=compile_, amp=amp)))


@cli.command()
@click.option("--figures", type=click.Path(file_okay=False, path_type=Path), default=Path("figures"),
              show_default=True, help="Folder of runs (FIGURES/MODEL/DATASET/metrics.json).")
@click.option("--readme", type=click.Path(dir_okay=False, path_type=Path), default=Path("README.md"),
              show_default=True, help="README whose results table to rewrite.")
def report(figures, readme):
    """Collect every metrics.json into the README's results table, with the official numbers."""
    from lvm import report as rep

    table = rep.table(rep.collect(figures))
    click.echo(table)
    if readme.exists():
        rep.write_readme(readme, table)
        click.echo(f"updated {readme}")


cli.add_command(grade)


def main():  # pragma: no cover - `python -m lvm`
    cli(prog_name="lvm")
