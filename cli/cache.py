"""`flowers cache`: the bottleneck and activation caches' size per network, and clearing them."""

from __future__ import annotations

from pathlib import Path

import click

from flowers.cli.context import CliContext
from flowers.models.caches.disk import KINDS, clear, usage
from flowers.models.errors import UsageError
from flowers.models.networks import NETWORKS


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB"


def _cached_name(home: Path, network: str | None) -> str | None:
    """The folder name the caches keep `network` under: its registry name (`mobilenet_v2` is
    mobilenet_v2_1.0_224), or a name the caches hold (made by another version, say); a name that
    is neither is a usage error listing the cached ones."""
    if network is None:
        return None
    if network in NETWORKS:
        return NETWORKS[network].name
    cached = sorted({item.network for item in usage(home)})
    if network in cached:
        return network
    raise UsageError(f"--network {network!r} is not a network in the registry (`flowers "
                     f"architectures` lists them) nor in the caches of {home} (they hold: "
                     f"{', '.join(cached) or 'none'})")


@click.command()
@click.option("--clear", "do_clear", is_flag=True, help="Remove the cached entries.")
@click.option("--kind", type=click.Choice(KINDS), default=None,
              help="Only this kind of cache (default: all).")
@click.option("--network", default=None,
              help="Only this network's entries (a registry name, or one the caches list).")
@click.pass_obj
def cache(obj: CliContext, do_clear: bool, kind: str | None, network: str | None) -> None:
    """Show (or --clear) the caches in FLOWERS_HOME: entries and disk use per network and kind."""
    home = obj.settings.home
    kinds = (kind,) if kind else KINDS
    network = _cached_name(home, network)
    if do_clear:
        freed = clear(home, kinds, network)
        chosen = " ".join(filter(None, (network, kind))) or "cached"
        click.echo(f"cleared {_size(freed)} from {home}" if freed else
                   f"no {chosen} entries to clear in {home}")
        return
    rows = [item for item in usage(home)
            if item.kind in kinds and (network is None or item.network == network)]
    if not rows:
        click.echo(f"no cached entries in {home}")
        return
    click.echo(f"{'kind':<12} {'network':<24} {'entries':>8} {'size':>10}")
    for item in rows:
        click.echo(f"{item.kind:<12} {item.network:<24} {item.entries:>8} "
                   f"{_size(item.size_bytes):>10}")
    click.echo(f"{'total':<12} {'':<24} {sum(i.entries for i in rows):>8} "
               f"{_size(sum(i.size_bytes for i in rows)):>10}")
