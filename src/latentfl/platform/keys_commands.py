"""``latentfl keys``: create a consortium's keys and roster, enrol and revoke participants."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfl.platform.crypto import (
    ROSTER_FILE,
    add_participant,
    create_identity,
    init_consortium,
    load_roster,
    revoke_participant,
)


def _print_roster(directory: Path) -> None:
    roster = load_roster(directory / ROSTER_FILE)
    print(f"roster {directory / ROSTER_FILE}")
    print(f"  coordinator  curve {roster.coordinator_curve_public.decode('ascii')}")
    for entry in roster.participants.values():
        print(f"  {entry.id:<12} curve {entry.curve_public.decode('ascii')}  {entry.status}")


def _init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    init_consortium(directory, args.participants)
    print(f"created keys for the coordinator and {len(args.participants)} participant(s)")
    _print_roster(directory)
    print(
        f"give each institution its folder {directory}/participants/<id>/ and a copy of "
        f"{directory}/roster.toml over a secure channel; keep {directory}/coordinator/ on the "
        "coordinator host"
    )
    return 0


def _create(args: argparse.Namespace) -> int:
    folder = Path(args.dir)
    create_identity(folder, args.id)
    print(f"created keys for {args.id!r} in {folder}/")
    print(
        f"send {folder}/curve.key and {folder}/sign.key (public) to the consortium operator; "
        "never send the *.key_secret files"
    )
    return 0


def _add(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    public_from = Path(args.public_from) if args.public_from else None
    add_participant(directory, args.id, public_from=public_from)
    if public_from is None:
        print(f"enrolled {args.id!r} with new keys in {directory}/participants/{args.id}/")
    else:
        print(f"enrolled {args.id!r} with the public keys from {public_from}/")
    print("copy the roster to the coordinator; a running coordinator picks it up on SIGHUP")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    revoke_participant(directory, args.id)
    print(f"revoked {args.id!r}: its keys are refused from now on (send SIGHUP to a running "
          "coordinator)")
    return 0


def _list(args: argparse.Namespace) -> int:
    _print_roster(Path(args.dir))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``latentfl keys {init,add,revoke,list,create}``."""
    keys = subparsers.add_parser(
        "keys",
        help="create and manage a consortium's keys and roster",
        description="Create CURVE and Ed25519 keys and the roster that enrols them.",
    )
    actions = keys.add_subparsers(title="actions", metavar="ACTION", required=True)

    init = actions.add_parser(
        "init", help="create coordinator and participant keys and DIR/roster.toml"
    )
    init.add_argument("--dir", required=True, help="new (or empty) folder for the keys")
    init.add_argument(
        "--participants", nargs="+", required=True, metavar="ID", help="participant ids to enrol"
    )
    init.set_defaults(handler=_init)

    add = actions.add_parser(
        "add", help="enrol a participant with new keys (or re-enrol a revoked one)"
    )
    add.add_argument("dir", metavar="DIR", help="folder made by `latentfl keys init`")
    add.add_argument("id", metavar="ID", help="participant id")
    add.add_argument(
        "--public-from",
        metavar="FOLDER",
        help="enrol the public keys (curve.key, sign.key) an institution made with `keys create`",
    )
    add.set_defaults(handler=_add)

    create = actions.add_parser(
        "create", help="make one participant's own key folder (run at the institution)"
    )
    create.add_argument("--dir", required=True, help="new folder for this participant's keys")
    create.add_argument("--id", required=True, help="the participant id agreed with the operator")
    create.set_defaults(handler=_create)

    revoke = actions.add_parser("revoke", help="revoke a participant's keys")
    revoke.add_argument("dir", metavar="DIR", help="folder made by `latentfl keys init`")
    revoke.add_argument("id", metavar="ID", help="participant id")
    revoke.set_defaults(handler=_revoke)

    show = actions.add_parser("list", help="show the roster")
    show.add_argument("dir", metavar="DIR", help="folder made by `latentfl keys init`")
    show.set_defaults(handler=_list)


__all__ = ["register"]
