"""The cluster: hosts (nodes) that share one store, each with its own agent."""
