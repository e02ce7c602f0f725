"""The pure core: records, the lock table, the claim index, file rules, names, keys, errors and the clock.

No I/O and no clock of its own: the table takes ``now`` and returns decisions and the changes to persist.
"""
