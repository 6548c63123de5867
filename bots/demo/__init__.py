"""Simulated business systems for demos and tests (aiohttp apps on loopback)."""
