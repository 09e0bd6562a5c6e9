"""The asyncio source of every I/O class; ``convostore/_sync`` is generated from it."""
