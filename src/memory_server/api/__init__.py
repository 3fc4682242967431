"""HTTP adapter: FastAPI app with health, metrics, REST and the MCP HTTP transports."""
