"""``python -m memory_server.cli`` (the local server the stdio bridge starts, and the tests)."""

from memory_server.cli import main

main()
