"""Interop drivers: the TypeScript SDK client (driver.mjs) and the Python SDK client (driver.py), one plan format."""
