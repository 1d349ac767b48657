"""The networked platform: keys and roster, the signed wire protocol, and the two daemons.

Only this package imports pyzmq and cryptography. ``crypto`` owns key files, the roster and the
ZAP authenticator; ``protocol`` owns the message envelope and payload codec (no sockets);
``coordinator`` and ``participant`` own the event loops.
"""

__all__: list[str] = []
