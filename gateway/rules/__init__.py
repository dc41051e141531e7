"""Pure decision logic: events and an injected clock in, decisions out.

Nothing in this package does I/O or imports a driver, the bridge, asyncio or a database.
"""
