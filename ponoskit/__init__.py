"""Shared foundation of the Ponos workflow-removal toolkit.

Jobs (migrate/, maint/) receive a :class:`ponoskit.context.Context` and never build
their own clients. Key layouts live in :mod:`ponoskit.keys`, connections in
:mod:`ponoskit.connections`.
"""
