"""cove: container networking and service discovery for Linux."""

__version__ = "0.1.0"
