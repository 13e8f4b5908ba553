"""``hpt-hpc export`` and ``hpt-hpc embed``: a trained backbone out of the toolkit."""
from __future__ import annotations

import click

from .scheduler import HERE, pop_scheduler, scheduler_options, submitted


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["torchvision", "timm", "moco"]),
              default=None, show_default=False,
              help="torchvision: a state dict with torchvision ResNet keys, no head (the "
                   "built-in and timm ResNets; set model.fc = torch.nn.Identity() before a "
                   "strict load); timm: the state dict of timm.create_model(name, "
                   "pretrained=False, num_classes=0, ...) for timm models, loaded strictly "
                   "(the line printed says how); moco: the official MoCo layout, projection "
                   "head included (a torch file). [default: the model's library: timm for "
                   "timm:<name>, else torchvision]")
@click.option("--out", required=True, type=click.Path(),
              help="The export file (never the CHECKPOINT): a name ending in .safetensors "
                   "writes a safetensors file (torchvision/timm layouts, meta as its string "
                   "metadata), any other name a torch file. It carries its preprocessing, "
                   "architecture and provenance (meta).")
def export(checkpoint: str, fmt: str, out: str) -> None:
    """Write the backbone of a toolkit CHECKPOINT (final.pt or last.pt) for other code,
    with the preprocessing its features expect (mean, std, input size, channels)."""
    from ..api import export as export_file
    meta = export_file(checkpoint, out, fmt)
    pre, model = meta["preprocessing"], meta["model"]
    click.echo(f"wrote {out} ({meta['layout']}; input {pre['input_size']}x"
               f"{pre['input_size']}, {pre['channels']} channel(s), short side resized to "
               f"{pre['resize']} ({pre['interpolation']}), mean {pre['mean']}, std "
               f"{pre['std']})")
    if meta["layout"] == "timm":
        kwargs = "".join(f", {k}={v!r}" for k, v in model["timm"]["kwargs"].items())
        click.echo(f"load: timm.create_model({model['timm']['name']!r}, pretrained=False"
                   f"{kwargs}).load_state_dict(state)")
    elif meta["layout"] == "torchvision" and model["torchvision"]:
        click.echo(f"load: torchvision.models.{model['torchvision']}() with fc = "
                   f"torch.nn.Identity(), then .load_state_dict(state)")
    elif meta["layout"] == "torchvision":
        click.echo("note: this model (width, small stem, channels or timm_kwargs) is not a "
                   "stock torchvision ResNet; hpt_hpc.load_backbone(path) builds it from the "
                   "file's meta")


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Experiment YAML file (model, data and dataset settings).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable).")
@click.option("--dataset", required=True, help="Dataset name from the config's datasets.")
@click.option("--split", help="Split to embed [default: test; train for an unlabelled "
                               "folder (format: folder): the folder itself unless it has "
                               "a train/ sub-folder].")
@click.option("--checkpoint", default=None,
              help="A file, stage:<name>, models:/<name>@<alias>, runs:/<id>/<path> or "
                   "public weights (timm:, torchvision:, hf-hub:; omit: random init).")
@click.option("--out", required=True, metavar="PREFIX",
              help="Name prefix of the two files written (appended, never replaced: "
                   "--out f/run.v2 writes f/run.v2.npy, the features, and "
                   "f/run.v2.index.csv: a '# root: <folder>' line, then row,path,labels "
                   "with paths relative to that folder; labels empty when unlabelled).")
@scheduler_options
def embed(config_path, overrides, dataset, split, checkpoint, out, **scheduler) -> None:
    """Features of every image of a dataset split (frozen backbone, eval transform),
    labelled or not (format: folder). In this process unless --executor (or --profile)
    says otherwise."""
    from ..config import InitRef, load_config
    from ..eval.embed import embed_outputs, embed_plan, run_embed_plan
    options, log_folder = pop_scheduler(scheduler, default_executor="debug")
    embed_outputs(out)  # a bad name: one line before any work
    cfg = load_config(config_path, overrides)
    ref = InitRef.parse(checkpoint, "--checkpoint").absolute()
    plan = embed_plan(cfg, dataset, split, ref, out, {"the --config file": config_path})
    result = submitted(plan, options, config_path, log_folder)
    if result is HERE:
        result = run_embed_plan(plan)
    if result is not None:
        click.echo(f"wrote {result['features']} ({result['rows']} x {result['dim']} float32) "
                   f"and {result['index']}")
