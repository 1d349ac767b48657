"""Keys, roster and ZAP authentication, with real key files and real CURVE sockets on 127.0.0.1."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import zmq

from latentfl.cli import main
from latentfl.errors import ConfigError, SecurityError
from latentfl.platform.crypto import (
    ROSTER_FILE,
    Identity,
    Roster,
    add_participant,
    curve_fingerprint,
    init_consortium,
    load_identity,
    load_roster,
    make_curve_client,
    make_curve_server,
    peer_user_id,
    revoke_participant,
    start_authenticator,
    verify,
    verify_key_to_hex,
)
from latentfl.platform.protocol import Kind, ReplayGuard, decode, encode

SECRET_FILES = ("curve.key_secret", "sign.key_secret")
PUBLIC_FILES = ("curve.key", "sign.key")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def consortium(tmp_path: Path) -> tuple[Path, Roster]:
    directory = tmp_path / "keys"
    return directory, init_consortium(directory, ["site-a", "site-b", "site-c"])


# --- key files and roster -------------------------------------------------------------------


def test_init_writes_key_folders_with_private_modes(consortium):
    """init writes 0700 folders, 0600 secret files, public files and an enrolling roster."""
    directory, roster = consortium
    folders = [directory / "coordinator"] + [
        directory / "participants" / pid for pid in ("site-a", "site-b", "site-c")
    ]
    assert mode(directory) == 0o700
    for folder in folders:
        assert mode(folder) == 0o700
        for name in SECRET_FILES:
            assert mode(folder / name) == 0o600
        for name in PUBLIC_FILES:
            assert mode(folder / name) == 0o644
    assert mode(directory / ROSTER_FILE) == 0o644
    assert roster.active_ids() == ["site-a", "site-b", "site-c"]
    assert load_roster(directory / ROSTER_FILE) == roster


def test_identity_matches_roster_and_pyzmq_certificates(consortium):
    """A loaded identity's keys are the roster's, and pyzmq reads the same CURVE pair."""
    directory, roster = consortium
    ident = load_identity(directory / "participants" / "site-b")
    assert ident.id == "site-b"
    entry = roster.participants["site-b"]
    assert ident.curve_public == entry.curve_public
    assert verify_key_to_hex(ident.verify_key) == verify_key_to_hex(entry.verify_key)
    public, secret = zmq.auth.load_certificate(directory / "participants/site-b/curve.key_secret")
    assert (public, secret) == (ident.curve_public, ident.curve_secret)
    assert zmq.curve_public(ident.curve_secret) == ident.curve_public
    signature = ident.signing_key.sign(b"hello")
    assert verify(entry.verify_key, signature, b"hello")
    coordinator = load_identity(directory / "coordinator")
    assert coordinator.id == "coordinator"
    assert coordinator.curve_public == roster.coordinator_curve_public
    assert ident.curve_secret.decode() not in repr(ident)


@pytest.mark.parametrize("name", SECRET_FILES)
def test_secret_file_readable_by_others_is_refused(consortium, name):
    """A secret key file with mode 0644 is refused with a message naming it and `chmod 600`."""
    directory, _ = consortium
    path = directory / "participants" / "site-a" / name
    path.chmod(0o644)
    with pytest.raises(SecurityError) as info:
        load_identity(directory / "participants" / "site-a")
    assert str(path) in str(info.value)
    assert f"chmod 600 {path}" in str(info.value)


def test_missing_key_folder_is_refused(tmp_path):
    """Loading a key folder that does not exist fails loudly."""
    with pytest.raises(SecurityError, match="does not exist"):
        load_identity(tmp_path / "nowhere")


def test_mismatched_signing_keys_are_refused(consortium):
    """A folder whose public signing key is another party's is refused."""
    directory, _ = consortium
    a, b = directory / "participants" / "site-a", directory / "participants" / "site-b"
    (a / "sign.key").write_text((b / "sign.key").read_text())
    with pytest.raises(SecurityError, match="disagree"):
        load_identity(a)


def test_roster_writable_by_others_is_refused(consortium):
    """A roster that group or others may write is refused (it is the allow-list)."""
    directory, _ = consortium
    (directory / ROSTER_FILE).chmod(0o666)
    with pytest.raises(SecurityError, match="chmod 644"):
        load_roster(directory / ROSTER_FILE)


@pytest.mark.parametrize(
    ("edit", "error", "words"),
    [
        (lambda t: "extra = 1\n" + t, ConfigError, "unknown keys"),
        (lambda t: t.replace("format = 1", "format = 2"), ConfigError, "format"),
        (lambda t: t.replace('status = "active"', 'status = "maybe"', 1), ConfigError, "status"),
        (lambda t: t.replace('id = "site-b"', 'id = "site-a"'), SecurityError, "twice"),
        (lambda t: t.replace('id = "site-b"', 'id = "../evil"'), ConfigError, "invalid"),
        (lambda t: t.replace("[[participants]]", "[[participants]]\nhost = 'x'", 1),
         ConfigError, "expected exactly"),
        (lambda t: t + "[[participants\n", ConfigError, "not valid TOML"),
    ],
)
def test_bad_roster_files_are_refused(consortium, edit, error, words):
    """Malformed rosters are refused with a message naming the problem."""
    directory, _ = consortium
    path = directory / ROSTER_FILE
    path.write_text(edit(path.read_text()))
    with pytest.raises(error, match=words):
        load_roster(path)


def test_bad_or_shared_keys_in_roster_are_refused(consortium):
    """A roster with a malformed key, or one key enrolled for two parties, is refused."""
    directory, roster = consortium
    path = directory / ROSTER_FILE
    text = path.read_text()
    a_key = roster.participants["site-a"].curve_public.decode()
    b_key = roster.participants["site-b"].curve_public.decode()
    path.write_text(text.replace(b_key, a_key))
    with pytest.raises(SecurityError, match="same CURVE key"):
        load_roster(path)
    path.write_text(text.replace(b_key, "short"))
    with pytest.raises(SecurityError, match="Z85"):
        load_roster(path)


@pytest.mark.parametrize("pid", ["", "-lead", "a b", "x" * 65, "coordinator", "ü"])
def test_invalid_participant_ids_are_refused(tmp_path, pid):
    """Ids must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$ and not be the coordinator's."""
    with pytest.raises(ConfigError):
        init_consortium(tmp_path / "k", [pid])
    assert not (tmp_path / "k").exists()


def test_init_never_overwrites_and_refuses_duplicates(consortium, tmp_path):
    """init refuses a non-empty folder and duplicated ids."""
    directory, _ = consortium
    with pytest.raises(ConfigError, match="not empty"):
        init_consortium(directory, ["site-d"])
    with pytest.raises(ConfigError, match="more than once"):
        init_consortium(tmp_path / "other", ["x", "x"])


def test_add_and_revoke_rewrite_the_roster(consortium):
    """add enrols fresh keys; revoke marks revoked; re-adding a revoked id rotates its keys."""
    directory, roster = consortium
    roster = add_participant(directory, "site-d")
    assert roster.active_ids() == ["site-a", "site-b", "site-c", "site-d"]
    assert load_identity(directory / "participants" / "site-d").id == "site-d"
    with pytest.raises(ConfigError, match="already enrolled"):
        add_participant(directory, "site-d")
    old_key = roster.participants["site-a"].curve_public
    roster = revoke_participant(directory, "site-a")
    assert roster.participants["site-a"].status == "revoked"
    assert "site-a" not in roster.active_ids()
    assert load_roster(directory / ROSTER_FILE) == roster
    assert revoke_participant(directory, "site-a") == roster  # idempotent
    with pytest.raises(ConfigError, match="not in roster"):
        revoke_participant(directory, "site-z")
    roster = add_participant(directory, "site-a")
    assert roster.participants["site-a"].active
    assert roster.participants["site-a"].curve_public != old_key
    assert roster.by_curve_key(old_key) is None
    assert load_identity(directory / "participants" / "site-a").curve_public != old_key
    assert mode(directory / ROSTER_FILE) == 0o644
    assert not list(directory.glob(".*.tmp"))


def test_keys_cli_init_add_revoke(tmp_path, capsys):
    """`latentfl keys init/add/revoke/list` create the files and roster, and report errors."""
    directory = tmp_path / "consortium"
    assert main(["keys", "init", "--dir", str(directory), "--participants", "h1", "h2"]) == 0
    assert mode(directory / "participants" / "h1" / "sign.key_secret") == 0o600
    assert mode(directory / "coordinator" / "curve.key_secret") == 0o600
    assert load_roster(directory / ROSTER_FILE).active_ids() == ["h1", "h2"]
    assert main(["keys", "add", str(directory), "h3"]) == 0
    assert main(["keys", "revoke", str(directory), "h1"]) == 0
    assert load_roster(directory / ROSTER_FILE).active_ids() == ["h2", "h3"]
    assert main(["keys", "list", str(directory)]) == 0
    out = capsys.readouterr().out
    assert "revoked" in out and "h3" in out
    assert main(["keys", "add", str(directory), "bad id"]) == 2
    assert "invalid" in capsys.readouterr().err


# --- ZAP over real CURVE sockets --------------------------------------------------------------

# Something that must arrive gets a deadline of seconds: a CURVE handshake plus a ZAP round
# trip can take well over a second on a loaded 2-core box, and poll returns as soon as it comes.
ARRIVE_MS = 20_000
# Something that must not arrive is waited for briefly: a slow box can only make these pass.
ABSENT_MS = 1000


@pytest.fixture
def context():
    """A context whose sockets are all closed with linger 0 at teardown, whatever the test did."""
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


@pytest.fixture
def server(consortium, context):
    """A ROUTER CURVE server on 127.0.0.1 guarded by the roster authenticator."""
    directory, roster = consortium
    auth = start_authenticator(context, roster)
    sock = context.socket(zmq.ROUTER)
    sock.linger = 0
    try:
        make_curve_server(sock, load_identity(directory / "coordinator"))
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        yield sock, f"tcp://127.0.0.1:{port}", auth
    finally:
        sock.close(linger=0)
        auth.stop()


def dealer(context, identity: Identity, server_key: bytes, endpoint: str, routing_id=None):
    """A CURVE client; the ``context`` fixture closes it at teardown."""
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    if routing_id is not None:
        sock.routing_id = routing_id
    make_curve_client(sock, identity, server_key)
    sock.connect(endpoint)
    return sock


def receive(sock: zmq.Socket, timeout_ms: int = ARRIVE_MS) -> list[zmq.Frame] | None:
    if not sock.poll(timeout_ms):
        return None
    return sock.recv_multipart(copy=False)


def nothing_arrives(sock: zmq.Socket) -> bool:
    return receive(sock, ABSENT_MS) is None


def test_enrolled_participant_exchanges_signed_message_with_user_id(consortium, context, server):
    """An enrolled key gets through; the server sees User-Id = participant id and verifies."""
    directory, roster = consortium
    sock, endpoint, _ = server
    ident = load_identity(directory / "participants" / "site-a")
    # The client picks a misleading routing id: identity must come from ZAP, not from it.
    client = dealer(context, ident, roster.coordinator_curve_public, endpoint, b"site-b")
    client.send_multipart(
        encode(Kind.HELLO, session="s", round=0, sender="site-a", signing_key=ident.signing_key)
    )
    frames = receive(sock)
    assert frames is not None
    routing, *message = frames
    assert routing.bytes == b"site-b"
    user_id = peer_user_id(message[0])
    assert user_id == "site-a"
    decoded = decode(
        message,
        user_id=user_id,
        verify_key=roster.participants[user_id].verify_key,
        session="s",
        expected_round=0,
        replay=ReplayGuard(None),
    )
    assert decoded.header.kind is Kind.HELLO
    sock.send_multipart([routing, b"welcome"])
    assert client.poll(ARRIVE_MS)
    assert client.recv() == b"welcome"
    client.close()


def test_unenrolled_key_gets_nothing_through(tmp_path, consortium, context, server):
    """A valid CURVE key that is not in the roster never reaches the server; the refusal is
    queued with the key's fingerprint (never the key) and no participant id."""
    _, roster = consortium
    sock, endpoint, auth = server
    stranger = init_consortium(tmp_path / "other", ["site-a"])  # same id, different keys
    ident = load_identity(tmp_path / "other" / "participants" / "site-a")
    assert stranger.participants["site-a"].curve_public != roster.participants["site-a"].curve_public
    client = dealer(context, ident, roster.coordinator_curve_public, endpoint)
    client.send(b"let me in")
    assert nothing_arrives(sock)
    assert "site-a" in auth.allowed_ids()
    refusals = auth.refusals()
    assert [(r.fingerprint, r.participant) for r in refusals][:1] == [
        (curve_fingerprint(ident.curve_public), None)]
    assert ident.curve_public.decode() not in repr(refusals)
    client.close()


def test_plain_client_without_curve_gets_nothing_through(context, server):
    """A client without CURVE cannot complete a handshake with the CURVE server."""
    sock, endpoint, _ = server
    client = context.socket(zmq.DEALER)
    client.linger = 0
    client.connect(endpoint)
    client.send(b"hello?")
    assert nothing_arrives(sock)
    client.close()


def test_revoked_key_refused_after_update_roster(consortium, context, server):
    """After revoke + update_roster, the revoked key cannot connect; others still can."""
    directory, roster = consortium
    sock, endpoint, auth = server
    auth.update_roster(revoke_participant(directory, "site-c"))
    assert auth.allowed_ids() == ["site-a", "site-b"]
    revoked = dealer(
        context, load_identity(directory / "participants" / "site-c"),
        roster.coordinator_curve_public, endpoint,
    )
    revoked.send(b"still here")
    assert nothing_arrives(sock)
    ok = dealer(
        context, load_identity(directory / "participants" / "site-b"),
        roster.coordinator_curve_public, endpoint,
    )
    ok.send(b"hi")
    frames = receive(sock)
    assert frames is not None and peer_user_id(frames[1]) == "site-b"
    revoked.close()
    ok.close()


def test_client_pinning_wrong_server_key_gets_nothing(consortium, context, server):
    """A participant pinned to another server key never talks to this server."""
    directory, roster = consortium
    sock, endpoint, _ = server
    ident = load_identity(directory / "participants" / "site-a")
    client = dealer(context, ident, roster.participants["site-b"].curve_public, endpoint)
    client.send(b"x")
    assert nothing_arrives(sock)
    client.close()


def test_authenticator_refuses_allow_any(consortium, context):
    """configure_curve (the path to CURVE_ALLOW_ANY or a cert folder) is refused."""
    _, roster = consortium
    auth = start_authenticator(context, roster)
    try:
        with pytest.raises(SecurityError):
            auth.configure_curve("*", zmq.auth.CURVE_ALLOW_ANY)
        assert not auth.allow_any
    finally:
        auth.stop()


def test_files_are_not_world_accessible_even_with_loose_umask(tmp_path):
    """Key files get their modes regardless of a permissive umask."""
    old = os.umask(0)
    try:
        init_consortium(tmp_path / "k", ["p1"])
    finally:
        os.umask(old)
    folder = tmp_path / "k" / "participants" / "p1"
    assert mode(folder) == 0o700
    assert all(mode(folder / name) == 0o600 for name in SECRET_FILES)
    assert mode(tmp_path / "k" / ROSTER_FILE) == 0o644


def test_established_connection_of_revoked_participant_is_refused_by_verifier(
    consortium, context, server
):
    """A connection opened before revocation still delivers frames, but they are refused."""
    from latentfl.errors import ProtocolError
    from latentfl.platform.protocol import Verifier

    directory, roster = consortium
    sock, endpoint, auth = server
    verifier = Verifier.of_roster(roster, session="s", replay=ReplayGuard(None))
    ident = load_identity(directory / "participants" / "site-c")
    client = dealer(context, ident, roster.coordinator_curve_public, endpoint)

    def send_and_verify():
        client.send_multipart(
            encode(Kind.HEARTBEAT, session="s", round=0, sender="site-c",
                   signing_key=ident.signing_key)
        )
        frames = receive(sock)
        assert frames is not None
        return verifier.verify(frames[1:], user_id=peer_user_id(frames[1]))

    assert send_and_verify().header.sender == "site-c"
    revoked = revoke_participant(directory, "site-c")
    auth.update_roster(revoked)
    verifier.update_roster(revoked)
    with pytest.raises(ProtocolError) as info:
        send_and_verify()
    assert info.value.reason == "unknown-sender"
    client.close()


def test_participant_verifies_coordinator_messages_from_roster(consortium):
    """A participant's Verifier accepts the coordinator's signature and nobody else's."""
    from latentfl.errors import ProtocolError
    from latentfl.platform.crypto import COORDINATOR_ID
    from latentfl.platform.protocol import Verifier

    directory, roster = consortium
    coordinator = load_identity(directory / "coordinator")
    site_a = load_identity(directory / "participants" / "site-a")
    verifier = Verifier.of_coordinator(roster, session="s", replay=ReplayGuard(None))
    task = encode(Kind.TASK, session="s", round=1, sender=COORDINATOR_ID,
                  signing_key=coordinator.signing_key, payload=b"w")
    assert verifier.verify(task, user_id=COORDINATOR_ID, expected_round=1).payload == b"w"
    forged = encode(Kind.TASK, session="s", round=1, sender=COORDINATOR_ID,
                    signing_key=site_a.signing_key, payload=b"w")
    with pytest.raises(ProtocolError) as info:
        verifier.verify(forged, user_id=COORDINATOR_ID)
    assert info.value.reason == "bad-signature"


def test_enrol_keys_an_institution_made_itself(consortium, tmp_path, capsys):
    """`keys create` at the institution + `keys add --public-from` enrols without secrets."""
    directory, _ = consortium
    own = tmp_path / "clinic-keys"
    assert main(["keys", "create", "--dir", str(own), "--id", "clinic-d"]) == 0
    assert mode(own) == 0o700 and mode(own / "sign.key_secret") == 0o600
    public = tmp_path / "received"
    public.mkdir()
    for name in PUBLIC_FILES:
        (public / name).write_bytes((own / name).read_bytes())
    assert main(["keys", "add", str(directory), "clinic-d", "--public-from", str(public)]) == 0
    roster = load_roster(directory / ROSTER_FILE)
    ident = load_identity(own)
    assert roster.participants["clinic-d"].curve_public == ident.curve_public
    assert roster.by_curve_key(ident.curve_public).id == "clinic-d"
    assert not (directory / "participants" / "clinic-d").exists()
    # keys made for another id, or already enrolled for someone else, are refused
    with pytest.raises(SecurityError, match="made for 'clinic-d'"):
        add_participant(directory, "clinic-e", public_from=public)
    site_a = directory / "participants" / "site-a"
    revoke_participant(directory, "site-b")
    (public / "curve.key").write_bytes((site_a / "curve.key").read_bytes().replace(
        b"id = site-a", b"id = site-b"))
    with pytest.raises(SecurityError, match="same CURVE key"):
        add_participant(directory, "site-b", public_from=public)
    assert load_roster(directory / ROSTER_FILE).participants["site-b"].status == "revoked"
    capsys.readouterr()
