"""Slack history into memories (issue 4): the client, the sync and its SQL state."""
