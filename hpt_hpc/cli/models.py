"""``hpt-hpc export`` and ``hpt-hpc embed``: a trained backbone out of the toolkit."""
from __future__ import annotations

import click


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True, dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["torchvision", "moco"]),
              default="torchvision", show_default=True,
              help="torchvision: backbone keys for torchvision's ResNet (fc not included: "
                   "set model.fc = torch.nn.Identity() before a strict load); moco: the "
                   "official MoCo layout, projection head included.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Where to write the export file (a torch file; never the CHECKPOINT). "
                   "It carries its preprocessing, architecture and provenance (meta).")
def export(checkpoint: str, fmt: str, out: str) -> None:
    """Write the backbone of a toolkit CHECKPOINT (final.pt or last.pt) for other code,
    with the preprocessing its features expect (mean, std, input size, channels)."""
    from ..api import export as export_file
    from ..models.export import torchvision_compatible
    meta = export_file(checkpoint, out, fmt)
    pre = meta["preprocessing"]
    click.echo(f"wrote {out} ({fmt}; input {pre['input_size']}x{pre['input_size']}, "
               f"{pre['channels']} channel(s), short side resized to {pre['resize']} "
               f"({pre['interpolation']}), mean {pre['mean']}, std {pre['std']})")
    if fmt == "torchvision" and not torchvision_compatible(meta):
        click.echo("note: this model (width, small stem or channels) is not a stock "
                   "torchvision ResNet; hpt_hpc.load_backbone(path) builds it from the "
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
def embed(config_path, overrides, dataset, split, checkpoint, out) -> None:
    """Features of every image of a dataset split (frozen backbone, eval transform),
    labelled or not (format: folder)."""
    from ..config import InitRef, load_config
    from ..device import resolve_device
    from ..eval.embed import embed_outputs, embed_split
    from ..eval.lineage import checkpoint_lineage, log_embedding
    features, index = embed_outputs(out)
    cfg = load_config(config_path, overrides)
    ref = InitRef.parse(checkpoint, "--checkpoint").absolute()
    lineage = checkpoint_lineage(cfg, ref, who="embed")
    rows, dim = embed_split(cfg, dataset, split, lineage.path, out,
                            resolve_device(cfg.device), {"the --config file": config_path})
    log_embedding(lineage, ref, dataset, split, {"out": out, "rows": rows, "dim": dim})
    click.echo(f"wrote {features} ({rows} x {dim} float32) and {index}")
