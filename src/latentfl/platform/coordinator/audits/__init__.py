"""The coordinator's side of audits: operators' requests to sites (``requests``), the
answers and shared reports it serves and stores (``service``), and their schema (``schema``)."""
