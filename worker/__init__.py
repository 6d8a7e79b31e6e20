"""The donating worker: join a run, set up the base model + LoRA, train shards with hivemind.Optimizer, report."""
