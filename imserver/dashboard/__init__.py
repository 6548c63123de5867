"""The 一屏统揽 operations dashboard: pages, data endpoints and a live feed (docs/operations.md).

``routes.py`` serves ``/dashboard/``; ``session.py`` signs its login cookie;
``service.py`` asks the store for per-unit counts inside the viewer's scope;
``live.py`` samples this node's metrics for rates and latency percentiles;
``nodes.py`` trades those summaries over the bus so every node's page lists every node.
"""
