"""Pure decisions: state machines, event types, retry policy. No I/O, no asyncio."""
