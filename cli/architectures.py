"""`flowers architectures`: the base networks in the registry, with their sizes and weight files."""

from __future__ import annotations

import click

from flowers.models.networks import DEFAULT_ARCHITECTURE, NETWORKS


@click.command()
def architectures() -> None:
    """List the base networks `flowers train --architecture` accepts."""
    click.echo(f"{'name':24} {'input':>5} {'bottleneck':>10}  {'split layer':16} weights file")
    for name, spec in NETWORKS.items():
        default = "  (default)" if name == DEFAULT_ARCHITECTURE else ""
        click.echo(
            f"{name:24} {spec.input_size:5} {spec.bottleneck_size:10}  {spec.split_layer:16} "
            f"{spec.weights_file}{default}"
        )
