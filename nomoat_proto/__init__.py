"""Python stubs of the coordinator API, generated from ``proto/coordinator.proto`` by ``proto/generate.py``.

A package of its own name: a top-level ``proto`` package would clash with the one ``proto-plus`` installs.
"""
