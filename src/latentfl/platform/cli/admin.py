"""``latentfl admin ACTION --config FILE``: steer a running coordinator as an operator.

``--config`` and ``--json`` go after the action, as ``--config`` does for every command
(``cli.config_after_subcommands``); before it (``latentfl admin --config FILE ACTION``, the
first spelling) they are still accepted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latentfl.config import load_config
from latentfl.platform.admin_client import AdminClient, AdminConfig
from latentfl.platform.coordinator.status_view import render_text
from latentfl.platform.wire.audit_request import AUDITS_ON_REQUEST, DP_OPTIONS

DEFAULT_TAIL = 20
OPTION_HELP = {
    "canaries": "canaries m, each trained on with probability 1/2",
    "epochs": "epochs of the audited run",
    "batch_size": "expected Poisson batch size",
    "lr": "SGD learning rate",
    "confidence": "confidence of the epsilon lower bound",
    "max_examples": "seeded subsample of at most this many of the site's examples",
    "seed": "seed of canaries, order and noise",
    "width": "ConvNet width",
    "depth": "ConvNet depth",
    "claimed_epsilon": "check this claim instead of the run's own accountant",
}


def _removed(result: dict[str, Any]) -> str:
    return ", ".join(result["removed"]) or "none"


def _status(client: AdminClient, args: argparse.Namespace) -> Any:
    status = client.status()
    if args.json:
        return status
    admin = status.get("admin", {})
    paused = "paused" if admin.get("paused") else "not paused"
    return "\n".join([*render_text(status), "", f"admin     {paused}; removed: {_removed(admin)}"])


def _pause(client: AdminClient, args: argparse.Namespace) -> Any:
    result = client.pause()
    if args.json:
        return result
    return ("paused: no round opens or closes until `latentfl admin resume`; updates for tasks "
            "already sent are still accepted" if result["changed"] else "already paused")


def _resume(client: AdminClient, args: argparse.Namespace) -> Any:
    result = client.resume()
    if args.json:
        return result
    return "resumed" if result["changed"] else "was not paused"


def _abort(client: AdminClient, args: argparse.Namespace) -> Any:
    result = client.abort_round(args.round)
    if args.json:
        return result
    kept = ", ".join(result["accepted"]) or "none"
    return (f"round {result['aborted']} aborted and skipped (updates it had accepted stay on "
            f"record: {kept}); next is round {result['next_round']}")


def _remove(client: AdminClient, args: argparse.Namespace) -> Any:
    result = client.remove(args.id)
    if args.json:
        return result
    if not result["changed"]:
        return f"{args.id} was already removed"
    left = " and left the round in progress" if result["left_round"] else ""
    done = (f"{args.id} removed: it gets no task in later rounds{left}; its connection stays "
            f"(removed: {_removed(result)})")
    if result.get("stalled"):
        done += (f"\nWARNING: the run cannot proceed: {result['stalled']}; readmit a "
                 "participant (`latentfl admin readmit ID`) or enrol another.")
    return done


def _readmit(client: AdminClient, args: argparse.Namespace) -> Any:
    result = client.readmit(args.id)
    if args.json:
        return result
    return (f"{args.id} readmitted: it is planned again from the next round" if result["changed"]
            else f"{args.id} was not removed")


def _request_audit(client: AdminClient, args: argparse.Namespace) -> Any:
    options = {name: getattr(args, name) for name in DP_OPTIONS if getattr(args, name) is not None}
    request = client.request_audit(args.participant, args.audit, options)
    if args.json:
        return request
    asked = ", ".join(f"{k} {v}" for k, v in sorted(options.items())) or "the site's defaults"
    return (f"requested {args.audit} audit {request['id']} of {args.participant} ({asked}); it "
            "reaches the agent at its next contact. The site runs it only if its policy allows "
            "([audit] dp_on_request); see the answer with `latentfl report` or `journal`.")


def _journal(client: AdminClient, args: argparse.Namespace) -> Any:
    # JSON lines either way: one entry per line, for reading or for jq
    return "\n".join(json.dumps(entry, sort_keys=True) for entry in client.journal(args.tail))


def _run(args: argparse.Namespace) -> int:
    config = load_config(args.config, AdminConfig)
    with AdminClient(config) as client:
        out = args.action(client, args)
    print(out if isinstance(out, str) else json.dumps(out, indent=2, sort_keys=True))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``latentfl admin {status,pause,resume,abort-round,remove,readmit,request-audit,
    journal}``."""
    admin = subparsers.add_parser(
        "admin", help="steer a running coordinator as an operator (from any host)",
        description="Send one signed admin command to a running coordinator with an operator's "
                    "keys (docs/deployment.md, 'The admin role').")
    admin.add_argument("--config", type=Path,
                       help="Operator TOML file (session, coordinator, roster, key_dir).")
    _json_option(admin, default=False)
    admin.set_defaults(handler=_run)
    actions = admin.add_subparsers(title="actions", metavar="ACTION", required=True)
    actions.add_parser("status", help="the coordinator's round, phase and participants"
                       ).set_defaults(action=_status)
    actions.add_parser("pause", help="open and close no round until resumed"
                       ).set_defaults(action=_pause)
    actions.add_parser("resume", help="carry on after a pause").set_defaults(action=_resume)
    abort = actions.add_parser("abort-round", help="skip the round in progress (its accepted "
                                                   "updates stay on record)")
    abort.add_argument("--round", type=int, default=None,
                       help="the round to abort; refused if it is no longer the one collecting "
                            "(default: the round in progress)")
    abort.set_defaults(action=_abort)
    remove = actions.add_parser("remove", help="take a participant out of later rounds (its "
                                               "keys and everyone's connections stay)")
    remove.add_argument("id", metavar="ID", help="participant id")
    remove.set_defaults(action=_remove)
    readmit = actions.add_parser("readmit", help="undo `remove`")
    readmit.add_argument("id", metavar="ID", help="participant id")
    readmit.set_defaults(action=_readmit)
    req = actions.add_parser("request-audit", help="ask a participant to run an audit on its own "
                                                   "data and share the aggregate numbers")
    req.add_argument("audit", choices=sorted(AUDITS_ON_REQUEST),
                     help="dp-sgd: the one-run DP audit of the site's own DP-SGD settings")
    req.add_argument("--participant", required=True, metavar="ID", help="participant id")
    for name, (kind, low, high) in DP_OPTIONS.items():
        req.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                         help=f"{OPTION_HELP[name]} ({low:g} to {high:g}; default: the site's "
                              "`participant audit-dp` default)")
    req.set_defaults(action=_request_audit)
    journal = actions.add_parser("journal", help="the last journal entries, as JSON lines")
    journal.add_argument("--tail", type=int, default=DEFAULT_TAIL, metavar="N",
                         help=f"how many entries, 1 to 1000 (default: {DEFAULT_TAIL})")
    journal.set_defaults(action=_journal)
    for action in dict.fromkeys(actions.choices.values()):
        # SUPPRESS: an action given no --json leaves the one before the action in place
        _json_option(action, default=argparse.SUPPRESS)


def _json_option(parser: argparse.ArgumentParser, *, default: Any) -> None:
    parser.add_argument("--json", action="store_true", default=default,
                        help="Print the coordinator's answer as JSON (default: readable text).")


__all__ = ["register"]
