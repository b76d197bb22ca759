"""cove: container networking and service discovery for Linux."""

import logging

__version__ = "0.1.0"

# A library logs and never decides where to: without a handler configured by
# the program (the agent, the CLI, the supervisor's own entry point), records
# go nowhere instead of to Python's last-resort stderr handler.
logging.getLogger("cove").addHandler(logging.NullHandler())
