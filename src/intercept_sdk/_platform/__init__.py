"""The platform side: keys, the publisher, the reference server.

Imports the protocol core, never the client.
"""
