"""``latentfl keys``: create a consortium's keys and roster, enrol and revoke participants and
operators."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentfl.platform.crypto import (
    ROSTER_FILE,
    add_operator,
    add_participant,
    create_identity,
    init_consortium,
    load_roster,
    revoke_operator,
    revoke_participant,
)


def _print_roster(directory: Path) -> None:
    roster = load_roster(directory / ROSTER_FILE)
    print(f"roster {directory / ROSTER_FILE}")
    print(f"  coordinator  curve {roster.coordinator_curve_public.decode('ascii')}")
    for entry in roster.participants.values():
        print(f"  {entry.id:<12} curve {entry.curve_public.decode('ascii')}  {entry.status}")
    for entry in roster.operators.values():
        print(f"  {entry.id:<12} curve {entry.curve_public.decode('ascii')}  {entry.status}  "
              "(operator)")


def _init(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    init_consortium(directory, args.participants, args.operators)
    operators = f" and {len(args.operators)} operator(s)" if args.operators else ""
    print(f"created keys for the coordinator, {len(args.participants)} participant(s)"
          f"{operators}")
    _print_roster(directory)
    print(
        f"give each institution its folder {directory}/participants/<id>/ and a copy of "
        f"{directory}/roster.toml over a secure channel; keep {directory}/coordinator/ on the "
        "coordinator host"
    )
    if args.operators:
        print(f"each operator's folder {directory}/operators/<id>/ lets it steer the coordinator "
              "with `latentfl admin`: guard it like the coordinator's config")
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
    enrol = add_operator if args.operator else add_participant
    enrol(directory, args.id, public_from=public_from)
    folder = "operators" if args.operator else "participants"
    if public_from is None:
        print(f"enrolled {args.id!r} with new keys in {directory}/{folder}/{args.id}/")
    else:
        print(f"enrolled {args.id!r} with the public keys from {public_from}/")
    print("copy the roster to the coordinator; a running coordinator picks it up on SIGHUP")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    is_operator = args.id in load_roster(directory / ROSTER_FILE).operators
    (revoke_operator if is_operator else revoke_participant)(directory, args.id)
    print(f"revoked {'operator ' if is_operator else ''}{args.id!r}: its keys are refused from "
          "now on (send SIGHUP to a running coordinator)")
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
    init.add_argument(
        "--operators", nargs="+", default=[], metavar="ID",
        help="operator ids to enrol, for `latentfl admin` (default: none)"
    )
    init.set_defaults(handler=_init)

    add = actions.add_parser(
        "add", help="enrol a participant (or an operator) with new keys, or re-enrol a revoked one"
    )
    add.add_argument("dir", metavar="DIR", help="folder made by `latentfl keys init`")
    add.add_argument("id", metavar="ID", help="participant (or operator) id")
    add.add_argument("--operator", action="store_true",
                     help="enrol an operator, who steers the coordinator with `latentfl admin`, "
                          "instead of a participant")
    add.add_argument(
        "--public-from",
        metavar="FOLDER",
        help="enrol the public keys (curve.key, sign.key) an institution made with `keys create`",
    )
    add.set_defaults(handler=_add)

    create = actions.add_parser(
        "create", help="make one participant's (or operator's) own key folder, on its own host"
    )
    create.add_argument("--dir", required=True, help="new folder for these keys")
    create.add_argument("--id", required=True, help="the id agreed with the consortium's operator")
    create.set_defaults(handler=_create)

    revoke = actions.add_parser("revoke", help="revoke a participant's (or operator's) keys")
    revoke.add_argument("dir", metavar="DIR", help="folder made by `latentfl keys init`")
    revoke.add_argument("id", metavar="ID", help="participant or operator id")
    revoke.set_defaults(handler=_revoke)

    show = actions.add_parser("list", help="show the roster")
    show.add_argument("dir", metavar="DIR", help="folder made by `latentfl keys init`")
    show.set_defaults(handler=_list)


__all__ = ["register"]
