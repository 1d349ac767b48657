"""The consortium's privacy commands.

- ``latentfl report --config coordinator.toml --out DIR``: the operator's consortium privacy
  report (``audits.render_consortium_report``): per participant the DP ledger its last accepted
  UPDATE reported in its signed header (as journaled), its own budget as its latest HELLO
  stated it (journaled), its accepted and declined tasks (from
  ``collect_status``), the aggregation mode, the audit aggregates it shared
  (``STATE/audits/KIND/PID.json``) and the operators' audit requests with their state
  (``STATE/audit_requests.json``); headed by the session, the rounds covered and the date.
  Reads the state folder only.
- ``latentfl export-model --config coordinator.toml --out FILE``: the global model of the
  latest checkpoint as an audits model file, for ``latentfl audit model``.
- ``latentfl participant audit --config participant.toml [--share] [--out DIR]``: see
  ``platform/participant/audits/client.py``.
- ``latentfl participant audit-dp --config participant.toml [--out DIR] [--share]``: the one-run
  DP audit of this site's ``[privacy.dp_sgd]`` on its own data, run locally
  (``audits/dp_command.py``); ``--share`` sends its aggregate numbers, signed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from latentfl.audits import (
    ConsortiumEntry,
    ModelSpec,
    ReportScope,
    render_consortium_report,
    save_model_file,
)
from latentfl.audits.consortium import budget_line, request_line
from latentfl.audits.dp_command import add_run_options, run_dp_audit_command
from latentfl.audits.shareable import shareable_aggregates
from latentfl.config import load_config
from latentfl.data import load_dataset
from latentfl.errors import ConfigError
from latentfl.log import set_log_level
from latentfl.platform.coordinator import CoordinatorConfig, collect_status
from latentfl.platform.coordinator.audits.requests import read_audit_requests
from latentfl.platform.coordinator.audits.service import load_shared_audits
from latentfl.platform.coordinator.journal import read_journal, verify_journal
from latentfl.platform.coordinator.rounds import load_strategy
from latentfl.platform.coordinator.status import no_run_yet, unreadable_state
from latentfl.platform.crypto import load_roster
from latentfl.platform.participant import ParticipantConfig
from latentfl.platform.participant.audits.client import AuditClient, run_participant_audit
from latentfl.platform.protocol import UPDATE_KINDS, Kind
from latentfl.strategies import Aggregation, input_stats_of

#: UPDATE header fields (payloads.PRIVACY_META) -> the consortium report's ledger keys.
LEDGER_FIELDS = {"epsilon": "epsilon", "delta": "delta", "noise_multiplier": "noise_multiplier",
                 "max_grad_norm": "max_grad_norm", "sample_rate": "sample_rate",
                 "dp_steps": "steps"}


def ledgers_from_journal(journal: Path) -> dict[str, dict[str, Any] | None]:
    """Per participant, the privacy fields of its last accepted UPDATE (None: none reported)."""
    verify_journal(journal)  # a damaged or edited journal is not reported from
    out: dict[str, dict[str, Any] | None] = {}
    for entry in read_journal(journal):
        if entry.get("event") != "accepted" or entry.get("kind") not in UPDATE_KINDS:
            continue
        privacy = entry.get("privacy") or {}
        ledger = {LEDGER_FIELDS[k]: v for k, v in privacy.items() if k in LEDGER_FIELDS}
        if ledger:
            ledger["round"] = entry.get("round")
        out[str(entry.get("peer"))] = ledger or None
    return out


def budgets_from_journal(journal: Path) -> dict[str, float | None]:
    """Per participant, the budget (``max_epsilon``, None: no budget set) its latest HELLO
    stated; a participant whose agent never stated one is absent."""
    return {str(e.get("peer")): e["max_epsilon"] for e in read_journal(journal)
            if e.get("event") == "accepted" and e.get("kind") == Kind.HELLO.value
            and "max_epsilon" in e}


def consortium_entries(config: Any) -> tuple[list[Any], ReportScope]:
    """One ConsortiumEntry per participant known to the roster, journal or shared audits, and
    what the report covers (session, rounds, time)."""
    try:
        return _consortium_entries(config)
    except PermissionError:
        raise unreadable_state(config.state_dir) from None


def _consortium_entries(config: Any) -> tuple[list[Any], ReportScope]:
    journal = config.state_dir / "journal.jsonl"
    if not journal.exists():
        raise no_run_yet(config.state_dir)
    ledgers = ledgers_from_journal(journal)  # verifies the journal first
    budgets = budgets_from_journal(journal)
    shared = load_shared_audits(config.state_dir)
    requests = read_audit_requests(config.state_dir)
    status = collect_status(config)
    people = status["participants"]
    ids = (set(ledgers) | set(shared) | set(load_roster(config.roster).active_ids())
           | {r["participant"] for r in requests})
    mode = config.aggregation.mode
    entries = []
    for pid in sorted(ids):
        audits = {kind: record["aggregates"] for kind, record in shared.get(pid, {}).items()}
        counts = people.get(pid, {})
        entries.append(ConsortiumEntry(participant=pid, aggregation_mode=mode,
                                       ledger=ledgers.get(pid), audits=audits,
                                       updates=counts.get("accepted", 0),
                                       declined=dict(counts.get("declined_reasons", {})),
                                       audit_requests=[r for r in requests
                                                       if r["participant"] == pid],
                                       set_aside=[{"round": c["round"],
                                                   "count": c["set_aside"],
                                                   "reasons": [t for t in c["reasons"]
                                                               if t.startswith("set aside")]}
                                                  for c in counts.get("rounds", [])
                                                  if c.get("set_aside")],
                                       budget=budgets.get(pid), budget_stated=pid in budgets))
    scope = ReportScope(session=config.session, rounds_done=status["rounds_done"],
                        rounds_planned=config.rounds, generated=status["generated"])
    return entries, scope


def _report(args: argparse.Namespace) -> int:
    config = load_config(args.config, CoordinatorConfig)
    entries, scope = consortium_entries(config)
    html_path, json_path = render_consortium_report(entries, args.out, scope=scope)
    print(scope.describe())
    for e in entries:
        shared = ", ".join(f"{k} {worst_status(a)}" for k, a in sorted(e.audits.items())) \
            or "no audit shared"
        declined = (f", declined {sum(e.declined.values())} tasks "
                    f"({', '.join(sorted(e.declined))})" if e.declined else "")
        mode = f"{e.aggregation_mode} ({Aggregation(e.aggregation_mode).meaning})"
        print(f"{e.participant}: {mode}, {e.updates} updates{declined}, {budget_line(e)}, "
              f"{shared}")
        for request in e.audit_requests:
            print(f"  {request_line(request)}")
    print(f"report: {html_path}\njson:   {json_path}")
    return 0


def worst_status(aggregates: dict[str, Any]) -> str:
    """A shared audit in one word: FLAG, INCONCLUSIVE, or clean."""
    statuses = {v.get("status") for v in aggregates.get("verdicts", [])}
    return "FLAG" if "flag" in statuses else ("INCONCLUSIVE" if "inconclusive" in statuses
                                              else "clean")


def export_global_model(config: Any, out: Path, round: int | None = None) -> Path:
    """Write the latest (or ``round``'s) global model as an audits model file; its path."""
    checkpoint, strategy = load_strategy(config, round)
    arch = strategy.evaluation_spec()
    mean, std = input_stats_of(strategy) or ((), ())
    if not mean and config.test_data is not None:
        stats = load_dataset(config.test_data)
        mean, std = stats.mean, stats.std
    spec = ModelSpec(model=arch.name, num_classes=arch.num_classes,
                     in_shape=tuple(arch.in_shape), options=dict(arch.options),
                     mean=tuple(mean), std=tuple(std))
    save_model_file(out, strategy.evaluation_model(), spec, meta={
        "session": config.session, "round": checkpoint.round, "method": config.strategy.method})
    return Path(out)


def _export(args: argparse.Namespace) -> int:
    config = load_config(args.config, CoordinatorConfig)
    path = export_global_model(config, args.out, args.round)
    print(f"model: {path} (sidecar {path}.json)")
    return 0


def _participant_audit(args: argparse.Namespace) -> int:
    set_log_level("warning")
    config = load_config(args.config, ParticipantConfig)
    out = args.out
    if out is None:
        if config.state_dir is None:
            raise ConfigError(f"{args.config} has no state_dir; pass --out DIR for the reports.")
        out = config.state_dir / "audits"
    outcome = run_participant_audit(config, out_dir=out, share=args.share, holdout=args.holdout,
                                    max_images=args.max_images, seed=args.seed,
                                    timeout_s=args.timeout)
    print(f"synthetic set of round {outcome.synthetic_round}: {outcome.images} images")
    report = json.loads(outcome.json.read_text())
    for w in report.get("warnings", []):
        print(f"WARNING {w}")
    for v in report["verdicts"]:
        print(f"{v['status'].upper():5} {v['title']}: {v['value']}")
    print(f"report: {outcome.html}\njson:   {outcome.json}")
    print("shared the aggregate numbers with the coordinator" if outcome.shared is not None
          else "nothing shared (pass --share to send the aggregate numbers)")
    return 0


def _participant_audit_dp(args: argparse.Namespace) -> int:
    set_log_level("warning")
    config = load_config(args.config, ParticipantConfig)
    if args.out is None:
        if config.state_dir is None:
            raise ConfigError(f"{args.config} has no state_dir; pass --out DIR for the reports.")
        args.out = config.state_dir / "audits"
    privacy = config.privacy
    _, json_path = run_dp_audit_command(
        args, data=config.data, dp=privacy.dp_sgd, delta=privacy.policy.delta,
        device=config.device, subset=None if config.partition is None else config.partition.take)
    if not args.share:
        print("nothing shared (pass --share to send the aggregate numbers)")
        return 0
    aggregates = shareable_aggregates(json.loads(json_path.read_text()))
    with AuditClient(config, timeout_s=args.timeout) as client:
        digest = client.share(aggregates)
    print(f"shared the aggregate numbers with the coordinator (sha256 {digest[:16]})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("report", help="Render the consortium privacy report (DP ledgers, "
                              "aggregation mode, shared audits) from a coordinator's state.")
    p.add_argument("--config", required=True, type=Path, help="The coordinator's TOML file.")
    p.add_argument("--out", required=True, type=Path, help="Directory for the HTML and JSON.")
    p.set_defaults(handler=_report)

    p = subparsers.add_parser("export-model", help="Write the global model of a coordinator's "
                              "latest checkpoint as a model file for `latentfl audit model`.")
    p.add_argument("--config", required=True, type=Path, help="The coordinator's TOML file.")
    p.add_argument("--out", required=True, type=Path, help="Model file (.safetensors).")
    p.add_argument("--round", type=int, help="Checkpoint round (default: the latest).")
    p.set_defaults(handler=_export)

    # `latentfl participant audit ...` beside `latentfl participant --config FILE` (the agent)
    agent = subparsers.choices["participant"]
    agent_handler = agent.get_default("handler")

    def run_agent(args: argparse.Namespace) -> int:
        if args.config is None:
            raise ConfigError("latentfl participant needs --config FILE (the participant TOML).")
        return agent_handler(args)

    agent.set_defaults(handler=run_agent)
    sub = agent.add_subparsers(title="one-shot commands", metavar="COMMAND")
    a = sub.add_parser("audit", help="Fetch this site's synthetic set from the coordinator, "
                       "audit it on the local private data, optionally share the numbers.")
    a.add_argument("--config", required=True, type=Path, help="Participant TOML file.")
    a.add_argument("--out", type=Path, help="Directory for the reports (default: "
                   "STATE_DIR/audits).")
    a.add_argument("--share", action="store_true", help="Send the aggregate numbers (verdicts, "
                   "counts; never images) to the coordinator, signed.")
    a.add_argument("--holdout", metavar="SPEC", help="Private images never used in training "
                   "(default: the test split of the configured data).")
    a.add_argument("--max-images", type=int, default=5000, help="Seeded subsample of at most "
                   "this many training and holdout images.")
    a.add_argument("--seed", type=int, default=0, help="Seed of subsamples and the encoder.")
    a.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for the "
                   "coordinator's answer.")
    a.set_defaults(handler=_participant_audit)

    d = sub.add_parser("audit-dp", help="One-run DP audit of this site's configured DP-SGD on "
                       "its own data, run here; writes aggregate numbers only and sends them "
                       "only with --share.")
    d.add_argument("--config", required=True, type=Path, help="Participant TOML file.")
    d.add_argument("--share", action="store_true", help="Send the aggregate numbers (epsilons, "
                   "canary and guess counts, verdict; never a score) to the coordinator, signed.")
    d.add_argument("--timeout", type=float, default=60.0, help="Seconds to wait for the "
                   "coordinator's answer (with --share).")
    add_run_options(d)
    d.set_defaults(handler=_participant_audit_dp)


__all__ = ["budgets_from_journal", "consortium_entries", "export_global_model", "ledgers_from_journal", "register"]
