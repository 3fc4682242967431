"""MCP adapter: tools over the memory service, and the stdio / SSE / streamable HTTP transports."""
