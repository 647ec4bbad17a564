"""The page's views, one module per concern.

- ``render``: results, statistics and messages as HTML / Markdown (pure functions); ``style.css`` styles them;
- ``plots``: the Monitoring tab's Bokeh figures and the columns they draw;
- ``widgets``: the Panel widgets of each tab and the connection banner, bound to ``dashboard.state``.
"""
