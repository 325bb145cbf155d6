"""Shell helpers shared by ``app.py`` and the pages: session state, the sidebar, cached
resources, progress bars, colours. Shell code: the only room besides ``app.py``/``pages/``
that imports streamlit. Every number shown comes from ``merging``, ``zoo`` or ``analysis``."""
