"""``tierlake config show``: the resolved configuration, secrets masked."""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from tierlake.commands import Subparsers
from tierlake.config import Settings, masked


def _show(args: argparse.Namespace, settings: Settings) -> int:
    data = masked(settings)
    text = json.dumps(data, indent=2) if args.json else yaml.safe_dump(data, sort_keys=False)
    sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return 0


def register(sub: Subparsers) -> None:
    config = sub.add_parser("config", help="configuration").add_subparsers(dest="action", required=True)
    show = config.add_parser("show", help="print the resolved configuration, secrets masked")
    show.add_argument("--json", action="store_true")
    show.set_defaults(handler=_show)
