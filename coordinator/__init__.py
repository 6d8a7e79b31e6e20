"""The nomoat coordinator: tracks runs, workers and contributions, and publishes merged adapter versions."""
