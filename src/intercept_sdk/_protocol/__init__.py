"""The protocol core: the rules the client and the platform must agree on.

Imported by both sides; imports neither (a test enforces the layering).
"""
