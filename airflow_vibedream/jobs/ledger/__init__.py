"""The ledger: pay once per image, ever.

- :mod:`.documents`: the entries, groups and pages under ``<output_path>/_vibedream_ledger/``;
- :mod:`.store`: where they are read and written (local, safely beneath the root; or a store);
- :mod:`.decision`: the rule (reuse, reconnect, unknown, known bad, new), no I/O;
- :mod:`.batch`: a batch's use of it (identify, sort, claim, journal, complete).
"""
