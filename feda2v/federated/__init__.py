"""Federated logic, split as in Flower apps: task (train/eval), client, server, generator."""
