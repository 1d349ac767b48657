"""The payload codecs: what the signed envelope (``latentfl.platform.protocol``) carries,
to and from the objects the parts work with, parsed strictly.

- :mod:`~latentfl.platform.wire.payloads`       TASK, UPDATE and the ckks kinds
- :mod:`~latentfl.platform.wire.secagg`         the secagg exchange's four steps
- :mod:`~latentfl.platform.wire.audit_request`  an operator's audit request and its options
"""
