"""The ``swarm`` command line. It sits above both sides: commands start a coordinator (``coordinator/``) or a
worker (``worker/``), or talk to a coordinator through ``swarm.client``. Heavy libraries (torch, PEFT, hivemind,
gRPC) are imported inside the command that needs them, so ``swarm --help`` stays fast.
"""
