"""The client side: options, sync, verification, the local store, decisions, audit, reports.

Imports the protocol core, never the platform.
"""
