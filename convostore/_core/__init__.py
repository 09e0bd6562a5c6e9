"""The pure core: no I/O, shared by the asyncio and sync drivers.

- ``planner``: the mode decision, the exact request body, the commit of a turn.
- ``store_rules``: what every backend checks and derives the same way.
- ``audit``: the per-turn hash chain and its verification.
- ``streaming``: rebuilding an interaction from the API's stream events.
"""
