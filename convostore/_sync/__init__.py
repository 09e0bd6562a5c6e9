# Generated from convostore/_async by scripts/unasync.py. Do not edit.
"""The asyncio source of every I/O class; ``convostore/_sync`` is generated from it."""
