"""The `lvm` command. Thin: it parses arguments and calls library functions; no math lives here,
and no model is named here: every model-specific choice is a field of the model's config (`-o`).
Every error a user can cause ends in one line on stderr and exit status 2, never a traceback;
the settings the engine's messages name are written as the flags that set them (`FLAGS`).
torch is imported only by the commands that need it, so `lvm --help` answers at once."""

from __future__ import annotations

import importlib
import shlex
import signal
import sys
import threading
import warnings
from pathlib import Path

import click

from lvm.engine.errors import Advice, Interrupted, UserError, plain

# Commands defined elsewhere, imported only when run: name -> (module, attribute, one-line help).
LAZY = {"grade": ("lvm.homework.grade", "grade",
                  "Check the question functions of a homework notebook or .py file against the course's contracts."),
        "eval": ("lvm.evaluation", "command", "Evaluate a trained model: nll (IWAE), bits/dim, fd, precision, recall.")}


# The flag that sets each setting the engine's messages name (`lvm.engine.errors`); a field of a
# model's config is set with `-o FIELD=VALUE`.
FLAGS = {"dataset": "--dataset", "out": "--out", "data_dir": "--data-dir", "train_limit": "--train-limit",
         "test_limit": "--test-limit", "epochs": "--epochs", "batch_size": "--batch-size", "lr": "--lr",
         "seed": "--seed", "device": "--device", "amp": "--amp", "resume": "--resume", "overwrite": "--overwrite",
         "temperature": "--temperature", "config": "-o"}


def flag(setting: str) -> str:
    """How the user sets `setting` here: `--train-limit`, `-o num_codes` (for `config.num_codes`)."""
    if setting.startswith("config."):
        return f"-o {plain(setting)}"
    return FLAGS.get(setting, plain(setting))


_python_show_warning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Advice is one `warning:` line, its settings named as flags; other warnings as Python shows them."""
    if isinstance(message, Advice):
        click.echo(f"warning: {message.phrased(flag)}", err=True)
    else:
        _python_show_warning(message, category, filename, lineno, file, line)


class Group(click.Group):
    """A click group that turns every user error into one line and a non-zero exit, and loads
    the LAZY commands only when one of them runs."""

    def list_commands(self, ctx):
        return [*self.commands, *(name for name in LAZY if name not in self.commands)]

    def get_command(self, ctx, name):
        if name in LAZY and name not in self.commands:
            module, attribute, _ = LAZY[name]
            self.add_command(getattr(importlib.import_module(module), attribute), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx, formatter):
        rows = [(name, LAZY[name][2] if name in LAZY and name not in self.commands
                 else self.commands[name].get_short_help_str(formatter.width - 20))
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if hasattr(signal, "SIGXFSZ") and threading.current_thread() is threading.main_thread():
            # past a file-size limit (`ulimit -f`) a write fails with EFBIG, said in one line,
            # instead of the process dying silently with half a file
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("always", Advice)
                warnings.showwarning = _show_warning
                code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx else ""
            click.echo(f"Error: {e.format_message()}{hint}", err=True)
            sys.exit(2)
        except click.ClickException as e:
            e.show()
            sys.exit(e.exit_code)
        except UserError as e:
            click.echo(f"Error: {e.phrased(flag)}", err=True)
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


def _seed(ctx, param, value):
    if value is not None and not 0 <= value < 2**63:
        raise click.BadParameter(f"must be between 0 and 2**63 - 1, got {value}")
    return value


def _with_resume_hint(e: Interrupted, fallback: list[str]) -> Interrupted:
    """The interruption with the command that continues it: the user's own command line plus
    --resume, less an --overwrite (which would start it again, and is refused beside --resume),
    or `fallback` (the command's name and required arguments) when not run as `lvm`."""
    again = [a for a in sys.argv[1:] if a not in ("--resume", "--overwrite")] if sys.argv[1:2] == fallback[:1] else fallback
    return Interrupted(f"{e}\nresume with: lvm {shlex.join(again)} --resume")


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder holding datasets in torchvision's layout [default: $LVM_DATA_DIR or ~/.cache/lvm].",
)
download_option = click.option(
    "--download/--no-download", default=True, show_default=True,
    help="Let torchvision download a missing dataset when the network allows.",
)
config_option = click.option(
    "-o", "--set", "overrides", multiple=True, metavar="FIELD=VALUE",
    help="Set a field of the model's config (repeatable); `lvm show MODEL` lists them.",
)
seed_option = click.option("--seed", type=int, default=None, callback=_seed, help="Random seed [default: 0].")
device_option = click.option("--device", default=None, help="auto, cpu or cuda [default: auto].")


def limit_options(command):
    """--train-limit and --test-limit: small slices of the data, for quick trials."""
    for name, split in (("--test-limit", "test"), ("--train-limit", "training")):
        command = click.option(name, type=int, default=None, callback=_positive,
                               help=f"Use the first N {split} examples.")(command)
    return command


@click.group(cls=Group)
@click.version_option(package_name="lvm")
def cli():
    """Latent-variable models: VAE, VLAE, VQ-VAE (three priors), PixelCNN and PixelVAE, trained and reported the course's way."""


@cli.command()
@click.argument("model")
@click.option("--dataset", default=None, help="Dataset name (see `lvm list`) [default: the model's].")
@config_option
@click.option("--epochs", type=int, default=None, callback=_positive, help="Epochs [default: the course's].")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="Minibatch size [default: 128].")
@click.option("--lr", type=float, default=None, help="Adam learning rate [default: 1e-3].")
@seed_option
@device_option
@click.option("--amp", type=click.Choice(["auto", "on", "off"]), default=None,
              help="bf16 autocast of training steps [default: auto = where the hardware has bf16 units].")
@data_dir_option
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder [default: runs/MODEL/DATASET].")
@limit_options
@click.option("--resume", is_flag=True, help="Continue the run in --out (more --epochs extend it).")
@click.option("--overwrite", is_flag=True, help="Start again in an --out that holds a run.")
@download_option
def run(model, dataset, overrides, epochs, batch_size, lr, seed, device, amp, data_dir, out, train_limit,
        test_limit, resume, overwrite, download):
    """Train MODEL on a dataset and write its row of the results table: metrics.json,
    history.json, train_plot.png, checkpoint.pt and the model's figures."""
    from lvm import registry
    from lvm.engine import config as configs
    from lvm.engine import pipeline

    if lr is not None and not lr > 0:
        raise click.BadParameter(f"must be positive, got {lr}", param_hint="'--lr'")
    spec = registry.get(model)
    settings = configs.parse_overrides(spec.config, overrides, fixed=tuple(spec.from_data))
    try:
        metrics = pipeline.train_row(
            spec, dataset, out=out, data_dir=data_dir, train_limit=train_limit, test_limit=test_limit,
            resume=resume, overwrite=overwrite, download=download, overrides=settings,
            epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device, amp=amp,
        )
    except Interrupted as e:
        raise _with_resume_hint(e, ["run", model]) from None
    if not metrics:  # not the main process of a torchrun job
        return
    click.echo(pipeline.final_line(spec, metrics["test"], metrics["config"]["model"]))
    if note := metrics.get("eval", {}).get("samples_skipped"):
        click.echo(f"note: {note}")
    click.echo(f"{metrics['seconds']:.0f} s on {metrics['device']}; wrote {metrics['out']}/")  # last: scripts read it


@cli.command()
@click.argument("model")
def show(model):
    """Everything MODEL can be set to: its config's fields (with `-o FIELD=VALUE`), stages,
    variants and default budget."""
    from dataclasses import asdict

    from lvm import registry
    from lvm.engine import config as configs

    spec = registry.get(model)
    click.echo(f"{model}: {registry.summary(model)}")
    click.echo(f"trains on: {', '.join(spec.kinds)} data [default dataset: {spec.default_dataset}]")
    if len(spec.stages) > 1:
        def own(stage) -> str:  # what a stage takes from the model's config rather than the run's budget
            said = [f"{stage.epochs} epochs"] if stage.epochs else []
            if stage.train is not None:
                said.append("by default " + ", ".join(f"{k} {v}" for k, v in stage.train(spec.config()).items()))
            return f" ({'; '.join(said)})" if said else ""
        click.echo("stages: " + ", then ".join(s.name + own(s) for s in spec.stages))
    if spec.variants:
        click.echo("variants: " + "; ".join(
            f"{name} ({', '.join(f'{k}={v}' for k, v in change.items())})" for name, change in spec.variants.items()))
    budget = {k: v for k, v in asdict(spec.train).items() if k in ("epochs", "batch_size", "lr", "grad_clip", "lr_schedule")}
    click.echo("budget: " + ", ".join(f"{k} {v}" for k, v in budget.items()) + " (--epochs, --batch-size, --lr)")
    click.echo(f"config ({spec.config.__name__}; set with -o FIELD=VALUE):")
    for line in configs.describe(spec.config, fixed=tuple(spec.from_data)):
        click.echo(f"  {line}")


@cli.command()
@click.option("--dataset", required=True, help="Dataset name (see `lvm list`).")
@click.option("--figures", type=click.Path(file_okay=False, path_type=Path), default=Path("figures"),
              show_default=True, help="Root folder: rows go to FIGURES/MODEL/DATASET[-VARIANT].")
@device_option
@seed_option
@data_dir_option
@click.option("--epochs", type=int, default=None, callback=_positive, help="Epochs of every row [default: each model's].")
@click.option("-o", "--set", "overrides", multiple=True, metavar="FIELD=VALUE",
              help="Set a config field in every row whose model has it (repeatable).")
@limit_options
@click.option("--resume", is_flag=True, help="Resume every row from its checkpoint (finished rows train no further).")
@click.option("--overwrite", is_flag=True, help="Train again rows whose folders hold a run.")
@download_option
def table(dataset, figures, device, seed, data_dir, epochs, overrides, train_limit, test_limit, resume, overwrite,
          download):
    """Train every model of the results table on one dataset (default budgets), timing each row;
    writes FIGURES/table-DATASET.json."""
    from lvm import table as tbl

    try:
        tbl.train_rows(dataset, figures=figures, data_dir=data_dir, download=download, device=device, seed=seed,
                epochs=epochs, overrides=overrides, train_limit=train_limit, test_limit=test_limit,
                resume=resume, overwrite=overwrite, echo=click.echo)
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
    from lvm.blocks.scaling import picture
    from lvm.engine import data as datasets
    from lvm.engine.plotting import png_path, save_image_grid, save_scatter

    out = png_path(out or Path("runs") / "data" / f"{name}.png")
    d = datasets.load(name, data_dir, download=download)
    if d.info.kind == "points":
        written = save_scatter({"train": d.train}, out, f"{name}: training data")
    else:
        written = save_image_grid(picture(d.train[:100], d.info.kind), out, f"{name}: 100 training examples")
    click.echo(f"{name}: {len(d.train)} train, {len(d.test)} test, one example: "
               f"{'x'.join(map(str, d.info.shape))} {str(d.train.dtype).replace('torch.', '')}")
    click.echo(f"wrote {written}")


@cli.command("list")
@data_dir_option
def list_(data_dir):
    """Models, and datasets with whether each is on disk."""
    from lvm import registry
    from lvm.engine import data as datasets

    root = datasets.data_root(data_dir)  # a bad one is the one line printed, before any other
    click.echo("models (`lvm show MODEL` for their settings):")
    for name in registry.names():
        click.echo(f"  {name:<22} {registry.summary(name)}")
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
@click.option("-n", "count", type=click.IntRange(1, 10_000), default=100, show_default=True, help="How many samples.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("runs/samples.png"), show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, callback=_seed)
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Sharpen (<1) or flatten (>1) an autoregressive model's distributions.")
def sample(checkpoint, count, out, seed, temperature):
    """Draw samples from a trained model."""
    from lvm import read_trained
    from lvm.engine import pipeline
    from lvm.engine.plotting import png_path

    pipeline.check_temperature(temperature)  # the flags first: they cost nothing, a checkpoint may be large
    png_path(out)
    spec, state = read_trained(checkpoint)
    click.echo(f"wrote {pipeline.sample_to_file(spec, checkpoint, count, out, seed, temperature, state=state)}")


@cli.command()
@checkpoint_option
@click.option("--dataset", default=None, help="Dataset whose test images to reconstruct [default: the checkpoint's].")
@click.option("-n", "count", type=click.IntRange(1, 1000), default=50, show_default=True, help="How many images.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("runs/reconstructions.png"),
              show_default=True)
@data_dir_option
@download_option
def reconstruct(checkpoint, dataset, count, out, data_dir, download):
    """Reconstruct test images with a trained model: originals beside reconstructions."""
    from lvm import read_trained
    from lvm.engine import data as datasets
    from lvm.engine import pipeline
    from lvm.engine.plotting import png_path

    png_path(out)  # the flags first: they cost nothing, a checkpoint may be large
    if dataset is not None:
        datasets.source(dataset)
    spec, state = read_trained(checkpoint)
    click.echo(f"wrote {pipeline.reconstruct_to_file(spec, checkpoint, out, count, dataset, data_dir, download, state=state)}")


@cli.command()
@click.argument("model")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--batch-size", type=int, default=None, callback=_positive, help="[default: the model's]")
@click.option("--steps", type=int, default=20, show_default=True, callback=_positive, help="Timed steps (after 3 warm-up steps).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile our step (the reference is never compiled).")
@click.option("--amp", type=click.Choice(["auto", "on", "off"]), default=None,
              help="bf16 autocast of our step [default: the model's; auto = where the hardware has bf16 units].")
@click.option("--channels-last", type=click.Choice(["auto", "on", "off"]), default=None,
              help="Channels-last layout of our step [default: auto].")
@click.option("--vs", multiple=True, metavar="FIELD=VALUE",
              help="Also time our step with this setting (amp=on, channels_last=off, ...), interleaved; repeatable.")
def bench(model, device, batch_size, steps, compile_, amp, channels_last, vs):
    """Time training steps of MODEL's default configuration against the course's plain loop; one JSON line."""
    import json

    from lvm.bench import bench as run_bench

    variants = {}
    for pair in vs:
        name, sep, value = pair.partition("=")
        if name.replace("-", "_") not in ("amp", "channels_last") or value not in ("auto", "on", "off"):
            raise click.BadParameter(f"expected amp=auto|on|off or channels_last=auto|on|off, got {pair!r}",
                                     param_hint="'--vs'")
        variants[f"{name.replace('-', '_')}={value}"] = {name.replace("-", "_"): value}
    click.echo(json.dumps(run_bench(model, device, batch_size, steps, compile=compile_, amp=amp,
                                    channels_last=channels_last, vs=variants)))


@cli.command()
@click.option("--figures", type=click.Path(file_okay=False, path_type=Path), default=Path("figures"),
              show_default=True, help="Folder of runs (FIGURES/MODEL/DATASET/metrics.json).")
@click.option("--write", "readme", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also rewrite the results table of this README (e.g. --write README.md).")
def report(figures, readme):
    """Print every run's final test numbers as a table, the official numbers beside ours."""
    from lvm import report as rep

    table = rep.table(rep.collect(figures))
    click.echo(table)
    if readme is not None:
        rep.write_readme(readme, table)
        click.echo(f"updated {readme}")


def main():  # pragma: no cover - `python -m lvm`
    cli(prog_name="lvm")
