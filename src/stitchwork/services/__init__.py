"""Every operation exactly once. API, CLI, chat and MCP are thin callers of these."""
