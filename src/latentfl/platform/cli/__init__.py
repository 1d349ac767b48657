"""The platform's commands (``latentfl coordinator``, ``participant``, ``status``, ``keys``,
``admin``, ``privacy``, ``report``): argument parsing and exit codes around the daemons and
tools, one module per command group. ``latentfl.cli`` registers each module's parsers."""
