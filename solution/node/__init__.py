"""A peer-to-peer file-sync node: a simplified BitTorrent on gevent. See README.md and docs/PROTOCOL.md."""

__version__ = "0.1.0"
