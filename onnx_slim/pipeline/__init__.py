"""The user-facing steps: prune, run (the deployment pipeline), sweep, and their configuration."""
