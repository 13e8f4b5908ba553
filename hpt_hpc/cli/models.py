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
              help="Where to write the state dict (a torch file).")
def export(checkpoint: str, fmt: str, out: str) -> None:
    """Write the backbone of a toolkit CHECKPOINT (final.pt or last.pt) for other code."""
    from ..models import load_checkpoint, save_checkpoint_atomic
    from ..models.export import export_backbone, torchvision_compatible
    state = export_backbone(checkpoint, fmt)
    save_checkpoint_atomic(state, out)
    click.echo(f"wrote {out} ({fmt}, {len(state.get('state_dict', state))} tensors)")
    if fmt == "torchvision" and not torchvision_compatible(load_checkpoint(checkpoint)
                                                           ["config"]):
        click.echo("note: this model (width, small stem or channels) is not a stock "
                   "torchvision ResNet; load it into hpt_hpc.models.build_resnet(...) with "
                   "the stage's model settings")


@click.command()
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="Experiment YAML file (model, data and dataset settings).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable).")
@click.option("--dataset", required=True, help="Dataset name from the config's datasets.")
@click.option("--split", default="test", show_default=True, help="Split to embed.")
@click.option("--checkpoint", default=None,
              help="A file, stage:<name>, models:/<name>@<alias> or runs:/<id>/<path> "
                   "(omit: random init).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Features file: <out>.npy and <out>.index.csv (paths and labels).")
def embed(config_path, overrides, dataset, split, checkpoint, out) -> None:
    """Features of every image of a dataset split (frozen backbone, eval transform)."""
    from pathlib import Path

    from ..config import InitRef, load_config
    from ..device import resolve_device
    from ..eval.embed import embed_split
    from ..eval.lineage import checkpoint_lineage, log_embedding
    cfg = load_config(config_path, overrides)
    ref = InitRef.parse(checkpoint, "--checkpoint").absolute()
    lineage = checkpoint_lineage(cfg, ref, who="embed")
    rows, dim = embed_split(cfg, dataset, split, lineage.path, Path(out),
                            resolve_device(cfg.device))
    log_embedding(lineage, ref, dataset, split, {"out": out, "rows": rows, "dim": dim})
    click.echo(f"wrote {Path(out).with_suffix('.npy')} ({rows} x {dim} float32) and "
               f"{Path(out).with_suffix('.index.csv')}")
