"""Federated logic, split as in Flower apps: task (train/eval), client, server, loop, and the
client-side generators (generators/)."""
