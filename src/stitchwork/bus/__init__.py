"""The event bus: committed events fanned out to in-process subscribers (SSE, WebSocket, CLI)."""
