"""convostore's performance harness: ``python -m benchmarks`` (see ``benchmarks/README.md``).

Every figure is a median over repeated runs (with min and max), measured in the same run as
its reference (the driver floor, a bare HTTP call, a bare ``json.dumps``), so that the ratio
is what gets quoted: absolute times drift on a shared machine, ratios much less.
"""
