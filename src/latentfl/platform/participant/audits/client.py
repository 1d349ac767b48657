"""``latentfl participant audit``: audit this site's own synthetic set, where its data lives.

A one-shot client beside the agent: its own DEALER connection with the participant's keys
(CURVE allows several connections of one key; the coordinator answers audit messages on the
connection they came in on, so the agent's own connection keeps its tasks). It

1. sends a signed ``FETCH_SYNTHETIC`` (no parameters: the coordinator returns the set distilled
   from *this* participant's weights, identified by its authenticated key);
2. runs the synthetic audit (``latentfl.audits``, as ``latentfl audit synthetic`` does) against
   its private training part T and a holdout H (its dataset's test split, never trained on);
3. writes the HTML and JSON reports (they show private images: they stay here);
4. with ``share``, sends the aggregate numbers (``audits.shareable_aggregates``: verdicts and
   counts, no images, no per-image distances) as a signed ``AUDIT_REPORT`` and waits for the ACK.

``latentfl participant audit-dp --share`` shares the one-run DP audit's aggregates through the
same client (:meth:`AuditClient.share`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zmq

from latentfl.audits import save_synthetic
from latentfl.audits.distances import random_encoder
from latentfl.audits.report import render_synthetic_html, synthetic_audit_json, write_report
from latentfl.audits.shareable import shareable_aggregates
from latentfl.audits.synthetic import audit_synthetic
from latentfl.data import load_dataset
from latentfl.errors import ConfigError, DataError, ProtocolError, Reason
from latentfl.platform.exchange import OneShotClient, exchange
from latentfl.platform.participant.config import ParticipantConfig
from latentfl.platform.participant.connection import connect, load_enrolment
from latentfl.platform.protocol import (
    DEFAULT_CLOCK_SKEW_S,
    Ack,
    Kind,
    Message,
    ReplayGuard,
    Verifier,
    encode,
    pack_json,
    unpack_tensors,
)
from latentfl.seeding import derive_seed

DEFAULT_TIMEOUT_S = 30.0
MAX_SYNTHETIC_IMAGES = 100_000


@dataclass(frozen=True)
class AuditOutcome:
    """Where the reports went and what (if anything) was shared."""

    html: Path
    json: Path
    flagged: bool
    synthetic_round: int
    images: int
    shared: dict[str, Any] | None


class AuditClient(OneShotClient):
    """One connection to the coordinator with this participant's keys (a context manager)."""

    def __init__(self, config: ParticipantConfig, *, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.config = config
        self.timeout_s = timeout_s
        enrolment = load_enrolment(config)
        self.identity = enrolment.identity
        self.verifier = Verifier.of_coordinator(enrolment.roster, session=config.session,
                                                replay=ReplayGuard(window_s=DEFAULT_CLOCK_SKEW_S),
                                                max_bytes=config.max_message_bytes)
        self.ctx = zmq.Context()
        self.sock = connect(self.ctx, config, enrolment)

    @property
    def pid(self) -> str:
        return self.identity.id

    def request(self, kind: Kind, *, payload: bytes = b"", reply: Kind) -> Message:
        """Send one signed message; return the coordinator's verified ``reply`` (REJECT raises)."""
        frames = encode(kind, session=self.config.session, round=0, sender=self.pid,
                        signing_key=self.identity.signing_key, payload=payload)
        return exchange(self.sock, frames, kind=kind, reply=reply, verifier=self.verifier,
                        timeout_s=self.timeout_s, endpoint=self.config.coordinator,
                        hint=" (see linger_s in docs/audits.md)")

    def fetch_synthetic(self) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """This participant's synthetic set: uint8 (N, H, W, C) images, int64 labels, meta."""
        message = self.request(Kind.FETCH_SYNTHETIC, reply=Kind.SYNTHETIC)
        tensors = unpack_tensors(message.payload, max_bytes=self.config.max_message_bytes)
        images, labels = tensors.get("images"), tensors.get("labels")
        if (set(tensors) != {"images", "labels"} or images.dtype != torch.uint8
                or images.ndim != 4 or labels.dtype != torch.int64 or labels.ndim != 1 or labels.shape[0] != images.shape[0]
                or not 0 < images.shape[0] <= MAX_SYNTHETIC_IMAGES):
            raise ProtocolError(
                Reason.MALFORMED,
                "SYNTHETIC payload is not uint8 (N, H, W, C) images with N int64 labels",
            )
        return images.numpy(), labels.numpy().astype(np.int64), dict(message.header.meta)

    def share(self, aggregates: dict[str, Any]) -> str:
        """Send the audit aggregates; return the SHA-256 the coordinator acknowledged."""
        payload = pack_json(aggregates)
        digest = hashlib.sha256(payload).hexdigest()
        ack = self.request(Kind.AUDIT_REPORT, payload=payload, reply=Kind.ACK)
        if Ack.from_meta(ack.header.meta).sha256 != digest:
            raise ProtocolError(
                Reason.BAD_HASH, "the coordinator acknowledged another audit report"
            )
        return digest


def local_images(config: ParticipantConfig, holdout: str | None = None) -> tuple[Any, Any, Any]:
    """(T, H, dataset): this site's training part, its holdout, and the dataset it came from."""
    ds = load_dataset(config.data)
    train = ds.train if config.partition is None else config.partition.take(ds.train)
    if holdout is not None:
        other = load_dataset(holdout)
        held = other.test if other.test is not None and len(other.test) else other.train
    elif ds.test is not None and len(ds.test):
        held = ds.test
    else:
        raise ConfigError(f"data {config.data} has no test split to serve as the holdout; pass "
                          "--holdout SPEC with private images never used in training.")
    return train, class_matched(held, train, seed=0), ds


def class_matched(holdout: Any, train: Any, *, seed: int) -> Any:
    """The largest seeded subset of ``holdout`` whose class mix equals ``train``'s.

    A site's training part is often skewed (a Dirichlet share holds a few classes); compared
    with an all-class holdout, its synthetic images would sit nearer its training images for
    that reason alone, and the share and membership checks would cry wolf.
    """
    k = int(max(train.y.max(), holdout.y.max())) + 1
    share = np.bincount(train.y, minlength=k) / len(train)
    available = np.bincount(holdout.y, minlength=k)
    present = share > 0
    if (available[present] == 0).any():
        return holdout  # cannot match; the audit report warns about the mix instead
    total = int(np.min(available[present] / share[present]))
    rng = np.random.default_rng(seed)
    picks = [rng.choice(np.flatnonzero(holdout.y == c), min(available[c], int(round(total * share[c]))),
                        replace=False) for c in np.flatnonzero(present)]
    return holdout.subset(np.sort(np.concatenate(picks)))


def _subsample(images: Any, limit: int, seed: int) -> Any:
    if len(images) <= limit:
        return images
    rng = np.random.default_rng(seed)
    return images.subset(np.sort(rng.choice(len(images), limit, replace=False)))


def run_participant_audit(config: ParticipantConfig, *, out_dir: Path, share: bool = False,
                          holdout: str | None = None, max_images: int = 5000, seed: int = 0,
                          alpha: float = 0.05,
                          timeout_s: float = DEFAULT_TIMEOUT_S) -> AuditOutcome:
    """Fetch this site's synthetic set, audit it locally, write reports, optionally share."""
    with AuditClient(config, timeout_s=timeout_s) as client:
        images, labels, meta = client.fetch_synthetic()
        private, held, ds = local_images(config, holdout)
        private = _subsample(private, max_images, seed)
        held = _subsample(held, max_images, derive_seed(seed, "holdout"))
        if images.shape[1:] != private.x.shape[1:]:
            raise DataError(f"synthetic images have shape {images.shape[1:]} but this site's "
                            f"images {private.x.shape[1:]}; expected the same (H, W, C)")
        out_dir = Path(out_dir)
        synthetic_meta = {"participant": client.pid, "session": config.session,
                          "round": meta.get("synthetic_round"), "method": meta.get("method")}
        save_synthetic(out_dir / "synthetic.safetensors", images, labels, synthetic_meta)
        encoder = random_encoder(ds.image_shape, ds.mean, ds.std, seed=seed)
        audit = audit_synthetic(images, private.x, held.x, encoder=encoder, seed=seed,
                                alpha=alpha)
        context = {"synthetic": f"fetched from {config.coordinator} (session {config.session}, "
                                f"round {meta.get('synthetic_round')})",
                   "private": f"{config.data} (this site's training part)",
                   "holdout": holdout or "test split", "synthetic_meta": synthetic_meta}
        report = synthetic_audit_json(audit, context)
        html_path, json_path = write_report(
            out_dir, "synthetic_audit",
            render_synthetic_html(audit, images, private.x, held.x, context), report)
        shared = None
        if share:
            shared = shareable_aggregates(report)
            client.share(shared)
    return AuditOutcome(html_path, json_path, audit.flagged, int(meta.get("synthetic_round", 0)),
                        int(images.shape[0]), shared)


__all__ = ["AuditClient", "AuditOutcome", "local_images", "run_participant_audit"]
