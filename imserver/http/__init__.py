"""The aiohttp HTTP API: files, health, metrics, admin."""
